"""Jobs as their users see them: enqueue, describe, list, cancel and resume.

The API and a training job's follow-ups use this module; it imports no torch. rq's job states map to
five: `queued` (also deferred, scheduled, or waiting for an automatic retry), `started`, `finished`,
`failed` and `canceled`. A running job that was canceled returns `{"canceled": true, ...}`, which rq
records as finished, so such a result reads as `canceled` here.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any, Literal, cast

from redis import Redis
from rq import Queue, Retry
from rq.callbacks import Callback
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry
from rq.utils import as_text

from shared.jobs.constants import (
    EVAL_JOB_FUNCTION,
    EVAL_QUEUE,
    FAILURE_CALLBACK,
    FAILURE_TTL,
    JOB_CANCEL_KEY,
    JOB_INDEX_KEY,
    RESULT_TTL,
    TRAIN_JOB_FUNCTION,
    TRAIN_QUEUE,
)
from shared.jobs.progress import TERMINAL_STATUSES, publish_status, read_state, update_state
from shared.settings import Settings

logger = logging.getLogger(__name__)

JobType = Literal["train", "eval"]
JobStatusName = Literal["queued", "started", "finished", "failed", "canceled"]

_JOB_FUNCTIONS = {TRAIN_QUEUE: TRAIN_JOB_FUNCTION, EVAL_QUEUE: EVAL_JOB_FUNCTION}
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_STATUS_NAMES: dict[JobStatus, JobStatusName] = {
    JobStatus.STARTED: "started",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}


class JobNotFoundError(LookupError):
    """No job with this id, or it expired."""


class JobStateError(RuntimeError):
    """The job's state does not allow the requested action (HTTP 409)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def fetch_job(redis: Redis, job_id: str) -> Job:
    """Return the job, raising `JobNotFoundError` for an unknown or expired id."""
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFoundError(f"job {job_id!r} not found; job ids are 32 hexadecimal digits")
    try:
        return Job.fetch(job_id, connection=redis)
    except NoSuchJobError as error:
        raise JobNotFoundError(f"job {job_id} not found; it never existed or expired") from error


def enqueue(redis: Redis, job_type: JobType, spec: dict[str, Any], timeout: int, retries: int = 0) -> Job:
    """Queue a job. `spec` is JSON-safe and contains no server path: the work process derives its
    folders from its own settings."""
    job_id = new_job_id()
    # Sent first, so that the stream always starts with it, even if a worker starts the job at once.
    publish_status(redis, job_id, "queued")
    redis.zadd(JOB_INDEX_KEY, {job_id: time.time()})
    job = Queue(job_type, connection=redis).enqueue_call(
        _JOB_FUNCTIONS[job_type],
        args=(spec,),
        job_id=job_id,
        timeout=timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=retries) if retries else None,
        on_failure=Callback(FAILURE_CALLBACK),
        description=f"{job_type} job",
    )
    logger.info("job %s: queued on %s (timeout %d s, retries %d)", job.id, job_type, timeout, retries)
    return job


def enqueue_train(redis: Redis, settings: Settings, spec: dict[str, Any], retries: int = 0) -> Job:
    return enqueue(redis, TRAIN_QUEUE, spec, timeout=settings.train_job_timeout, retries=retries)


def enqueue_eval(redis: Redis, settings: Settings, spec: dict[str, Any]) -> Job:
    return enqueue(redis, EVAL_QUEUE, spec, timeout=settings.eval_job_timeout)


def job_status(job: Job) -> JobStatusName:
    status = job.get_status(refresh=False)
    name = _STATUS_NAMES.get(status, "queued")
    if name == "finished" and (job.return_value() or {}).get("canceled"):
        return "canceled"
    return name


def job_spec(job: Job) -> dict[str, Any]:
    return job.args[0] if job.args else {}


def _timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def describe_job(redis: Redis, job: Job) -> dict[str, Any]:
    """Build the public view of a job: status, timestamps, progress, result and error."""
    status = job_status(job)
    state = read_state(redis, job.id)
    error = None
    if status == "failed":
        error = state.get("error") or _error_from_result(job)
    result = job.return_value() if status in {"finished", "canceled"} else None
    return {
        "id": job.id,
        "type": job.origin,
        "status": status,
        "created_at": _timestamp(job.created_at),
        "started_at": _timestamp(job.started_at),
        "ended_at": _timestamp(job.ended_at) if status in TERMINAL_STATUSES else None,
        "cancel_requested": status == "started" and bool(redis.exists(JOB_CANCEL_KEY.format(id=job.id))),
        "progress": state.get("progress"),
        "follow_ups": state.get("follow_ups") or {},
        "result": result,
        "error": error,
    }


def _error_from_result(job: Job) -> dict[str, str]:
    """Fall back on the last line of rq's traceback when no failure was recorded."""
    latest = job.latest_result()
    text = (latest.exc_string if latest else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "the job failed without an error message"
    error_type, _, message = last.partition(": ")
    return {"type": error_type.rsplit(".", 1)[-1] if message else "Error", "message": message or last}


def list_jobs(
    redis: Redis, job_type: JobType | None = None, status: JobStatusName | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Describe the newest jobs first, optionally of one type and status; expired ids are dropped."""
    ids = [as_text(raw) for raw in cast(list[bytes], redis.zrevrange(JOB_INDEX_KEY, 0, -1))]
    views = []
    for job_id, job in zip(ids, Job.fetch_many(ids, connection=redis), strict=True):
        if job is None:
            redis.zrem(JOB_INDEX_KEY, job_id)
            continue
        if job_type and job.origin != job_type:
            continue
        view = describe_job(redis, job)
        if status and view["status"] != status:
            continue
        views.append(view)
        if len(views) >= limit:
            break
    return views


def cancel(redis: Redis, job: Job) -> JobStatusName:
    """Cancel a queued job now, or ask a started one to stop after its current step.

    Returns the status after the call: `canceled`, or `started` while the stop is pending.
    """
    status = job_status(job)
    if status in TERMINAL_STATUSES:
        raise JobStateError(f"job {job.id} is already {status}; there is nothing to cancel")
    # Set before rq's cancel, so a work process that dequeued the job a moment ago stops too.
    redis.set(JOB_CANCEL_KEY.format(id=job.id), 1, ex=FAILURE_TTL)
    if status == "started":
        logger.info("job %s: cancel requested; it stops after its current step", job.id)
        publish_status(redis, job.id, "started", cancel_requested=True)
        return "started"
    try:
        job.cancel()
    except InvalidJobOperation as error:
        raise JobStateError(f"job {job.id} cannot be canceled: {error}") from error
    logger.info("job %s: canceled while queued", job.id)
    publish_status(redis, job.id, "canceled")
    return "canceled"


def resume(redis: Redis, job: Job) -> None:
    """Queue a failed or canceled job again under the same id and folders.

    Training continues from its newest complete checkpoint, evaluation after its last complete
    prediction.
    """
    status = job_status(job)
    if status in {"queued", "started", "finished"}:
        raise JobStateError(f"job {job.id} is {status}; only failed or canceled jobs resume")
    registry = {
        JobStatus.FAILED: job.failed_job_registry,
        JobStatus.STOPPED: job.failed_job_registry,
        JobStatus.FINISHED: job.finished_job_registry,
        JobStatus.CANCELED: CanceledJobRegistry(job.origin, connection=redis),
    }[job.get_status(refresh=False)]
    redis.delete(JOB_CANCEL_KEY.format(id=job.id))
    update_state(redis, job.id, error=None)
    try:
        registry.requeue(job)
    except InvalidJobOperation as error:
        raise JobStateError(f"job {job.id} cannot be resumed now: {error}") from error
    redis.persist(job.key)  # A finished (canceled) job's hash had the result TTL.
    publish_status(redis, job.id, "queued", resumed=True)
    logger.info("job %s: resumed", job.id)
