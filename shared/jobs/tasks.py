"""Job functions, run by a worker in a fresh work process per job (rq's SpawnWorker).

Each takes the JSON-safe spec the API built and derives its folders from this process's settings:
adapters (and checkpoints) in ADAPTERS/<job id>, evaluation results in RESULTS/<job id>, a merged
model in MERGED/<job id>. A rerun of the same job id (resume or automatic retry) therefore finds its
checkpoints or its partial predictions and continues from them. torch loads here, never in the
worker's parent process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rq import get_current_job
from rq.job import Job

from shared.jobs.client import enqueue_eval
from shared.jobs.constants import JOB_CANCEL_KEY, MODEL_RELOAD_CHANNEL
from shared.jobs.locks import hold_run_lock
from shared.jobs.progress import EventLogHandler, JobReporter, read_state, update_state
from shared.settings import Settings, get_settings
from shared.train.checkpoints import latest_checkpoint_step, remove_partial_checkpoints

logger = logging.getLogger(__name__)

# prctl option from <linux/prctl.h>: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class JobCanceledError(Exception):
    """Raised inside an evaluation to stop it after the batch that saw the cancel request."""


def _die_with_worker() -> None:
    """Ask Linux to SIGKILL this work process when the worker's parent dies.

    Without it, a work process whose parent was killed keeps the GPU busy, and no process is left
    to record its result, while the reaper already reports the job as failed.
    """
    if not sys.platform.startswith("linux"):
        return  # NOTE: elsewhere an orphaned work process runs on until its job ends.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed with errno %d", ctypes.get_errno())


@contextmanager
def _running(job: Job) -> Iterator[JobReporter]:
    """Hold the job's run lock and send its log lines as events while the job runs."""
    _die_with_worker()
    if not logging.getLogger().handlers:
        from shared.logs import setup_logging

        setup_logging()
    reporter = JobReporter(job.connection, job.id)
    handler = EventLogHandler(reporter)
    project_logger = logging.getLogger("shared")
    project_logger.addHandler(handler)
    try:
        with hold_run_lock(job.connection, job.id):
            process = {"pid": os.getpid(), "host": socket.gethostname()}
            update_state(job.connection, job.id, error=None, process=process)
            reporter.status("started", pid=process["pid"])
            yield reporter
    finally:
        project_logger.removeHandler(handler)


def _cancel_requested(job: Job) -> bool:
    return bool(job.connection.exists(JOB_CANCEL_KEY.format(id=job.id)))


def train_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune with `spec["options"]`, then run the follow-ups that the spec requests."""
    job = get_current_job()
    assert job is not None, "train_job runs only inside an rq worker"
    settings = get_settings()
    with _running(job) as reporter:
        return _train(job, spec, settings, reporter)


def _train(job: Job, spec: dict[str, Any], settings: Settings, reporter: JobReporter) -> dict[str, Any]:
    from shared.hparams import TrainArgs, TrainOptions
    from shared.jobs.train_callback import JobTrainerCallback
    from shared.train.workflow import run_training

    output_dir = settings.adapters_dir / job.id
    options = TrainOptions.model_validate(spec["options"])
    args = TrainArgs(
        **options.model_dump(),
        output_dir=str(output_dir),
        model_name_or_path=spec.get("model_name_or_path"),
        disable_tqdm=True,
    )
    remove_partial_checkpoints(output_dir)
    resumed_from = latest_checkpoint_step(output_dir)
    logger.info(
        "job %s: training into %s%s", job.id, output_dir, f" from step {resumed_from}" if resumed_from else ""
    )
    callback = JobTrainerCallback(reporter, cancel_requested=lambda: _cancel_requested(job))
    metrics = run_training(args, settings, callbacks=[callback])

    result: dict[str, Any] = {
        "output_dir": str(output_dir),
        "metrics": metrics,
        "resumed_from_step": resumed_from,
    }
    if callback.canceled:
        result.update(canceled=True, checkpoint_step=latest_checkpoint_step(output_dir))
        logger.info("job %s: canceled at step %s", job.id, result["checkpoint_step"])
        reporter.status("canceled", result=result)
        return result
    result["follow_ups"] = _run_follow_ups(job, spec, options, settings, output_dir)
    logger.info("job %s: finished; adapter in %s", job.id, output_dir)
    reporter.status("finished", result=result)
    return result


def _run_follow_ups(
    job: Job, spec: dict[str, Any], options, settings: Settings, output_dir: Path
) -> dict[str, Any]:
    """Queue the evaluation, merge, and announce the merged model, as the spec requests."""
    follow_ups: dict[str, Any] = read_state(job.connection, job.id).get("follow_ups") or {}
    base_model = spec.get("model_name_or_path")
    if spec.get("eval") is not None and "eval_job_id" not in follow_ups:
        eval_spec = {"options": spec["eval"], "model_name_or_path": base_model, "train_job_id": job.id}
        follow_ups["eval_job_id"] = enqueue_eval(job.connection, settings, eval_spec).id
        update_state(job.connection, job.id, follow_ups=follow_ups)
        logger.info("job %s: queued evaluation job %s", job.id, follow_ups["eval_job_id"])

    if not (spec.get("merge") or spec.get("serve")):
        return follow_ups
    if options.finetuning_type == "full":
        merged = output_dir  # Full fine-tuning saved a complete model already.
    else:
        from shared.merge import merge_adapter

        merged = merge_adapter(
            output_dir, settings.merged_dir / job.id, base_model=base_model, settings=settings
        )
    follow_ups["merged_dir"] = str(merged)
    update_state(job.connection, job.id, follow_ups=follow_ups)

    if spec.get("serve"):
        job.connection.publish(MODEL_RELOAD_CHANNEL, json.dumps({"path": str(merged), "name": job.id}))
        follow_ups["served"] = True
        update_state(job.connection, job.id, follow_ups=follow_ups)
        logger.info("job %s: asked the API to serve %s", job.id, merged)
    return follow_ups


def eval_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate and score predictions for a base model or a training job's adapter."""
    job = get_current_job()
    assert job is not None, "eval_job runs only inside an rq worker"
    settings = get_settings()
    with _running(job) as reporter:
        return _evaluate(job, spec, settings, reporter)


def _evaluate(job: Job, spec: dict[str, Any], settings: Settings, reporter: JobReporter) -> dict[str, Any]:
    from shared.eval.predict import run_evaluation
    from shared.hparams import EvalArgs, EvalOptions

    output_dir = settings.results_dir / job.id
    train_job_id = spec.get("train_job_id")
    args = EvalArgs(
        **EvalOptions.model_validate(spec["options"]).model_dump(),
        output_dir=str(output_dir),
        checkpoint_dir=str(settings.adapters_dir / train_job_id) if train_job_id else None,
        model_name_or_path=spec.get("model_name_or_path"),
    )

    def on_progress(values: dict[str, Any]) -> None:
        reporter.progress(values)
        if _cancel_requested(job):
            raise JobCanceledError

    result: dict[str, Any] = {
        "output_dir": str(output_dir),
        "train_job_id": train_job_id,
        "dataset": args.dataset,
    }
    try:
        results = run_evaluation(args, settings, on_progress=on_progress)
    except JobCanceledError:
        result["canceled"] = True
        logger.info("job %s: evaluation canceled", job.id)
        reporter.status("canceled", result=result)
        return result
    result["metrics"] = {
        key: value for key, value in results.items() if key.startswith("predict_") or key == "eval_loss"
    }
    logger.info("job %s: evaluation finished; results in %s", job.id, output_dir)
    reporter.status("finished", result=result)
    return result
