"""The job system without workers: enqueue options, states, failures, the reaper, the run lock and events.

Everything runs against the session's redis-server. Jobs that must finish run in-process on rq's
SimpleWorker with a stand-in function, so no model is trained here. tests/services/test_jobs_api.py
runs real training jobs in real workers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from rq import Queue
from rq.exceptions import AbandonedJobError
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.worker import SimpleWorker

from shared.jobs import client
from shared.jobs.constants import (
    EVAL_QUEUE,
    FAILURE_TTL,
    JOB_LOCK_KEY,
    RESULT_TTL,
    TRAIN_JOB_FUNCTION,
    TRAIN_QUEUE,
)
from shared.jobs.failures import describe_exit, on_job_failure, on_work_horse_killed
from shared.jobs.locks import JobAlreadyRunningError, hold_run_lock, lock_token, release_dead_holder
from shared.jobs.progress import publish_event, read_events, read_state
from shared.jobs.reaper import reap_abandoned_jobs
from shared.jobs.worker import build_worker
from shared.settings import Settings
from tests.conftest import REPO


class InProcessWorker(SimpleWorker):
    """rq's SimpleWorker without the command channel, whose thread takes up to 60 s to stop
    (rq 3.0 with redis-py 8)."""

    def subscribe(self) -> None:
        pass


def run_queued_jobs(redis: Redis, queue: str) -> None:
    InProcessWorker([Queue(queue, connection=redis)], connection=redis).work(burst=True)


def stand_in_canceled(spec: dict) -> dict:
    """Job function of these tests: the result a canceled training job returns."""
    return {"canceled": True, "output_dir": "unused"}


@pytest.fixture
def redis(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(volumes_dir=tmp_path / "volumes", data_dir=REPO / "data", train_job_timeout=7200)


def status_events(redis: Redis, job_id: str) -> list[dict]:
    return [event.data for event in read_events(redis, job_id) if event.kind == "status"]


def stand_in_failing(spec: dict) -> dict:
    """Job function of these tests: an evaluation that raises."""
    raise RuntimeError("out of prompts")


def enqueue_stand_in(redis: Redis, job_type, function):
    """Queue a job that runs `function` instead of the real one, with the options of a real job."""
    job = client.enqueue(redis, job_type, {"options": {}}, timeout=60)
    job.func_name = f"{__name__}.{function.__name__}"
    job.save()
    return job


def start_abandoned_job(redis: Redis, settings: Settings, retries: int = 0):
    """Dequeue a training job as a worker named train-gone would, then let it die silently."""
    job = client.enqueue_train(redis, settings, {"options": {}}, retries=retries)
    worker = build_worker(TRAIN_QUEUE, redis, name="train-gone")
    dequeued, _ = Queue.dequeue_any([Queue(TRAIN_QUEUE, connection=redis)], None, connection=redis)
    execution = worker.prepare_execution(dequeued)
    worker.prepare_job_execution(dequeued)
    registry = StartedJobRegistry(TRAIN_QUEUE, connection=redis)
    # The heartbeat expiry passes as if the worker had stopped heartbeating long ago.
    redis.zadd(registry.key, {execution.composite_key: time.time() - 1})
    return job


def test_worker_imports_no_torch():
    code = (
        "import sys, shared.jobs.worker, shared.jobs.client, shared.jobs.reaper, shared.jobs.tasks, "
        "services.api.routes.jobs; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert output.stdout.split() == ["False", "False"]


def test_enqueue_sets_timeout_and_ttls(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {"dataset": "adgen_sample"}}, retries=2)

    assert job.timeout == 7200
    assert job.result_ttl == RESULT_TTL
    assert job.failure_ttl == FAILURE_TTL
    assert job.func_name == TRAIN_JOB_FUNCTION
    assert job.retries_left == 2
    assert job.failure_callback is on_job_failure
    assert client.job_spec(job) == {"options": {"dataset": "adgen_sample"}}
    assert client.describe_job(redis, job)["status"] == "queued"
    assert status_events(redis, job.id) == [{"status": "queued"}]


def test_eval_job_uses_eval_timeout(redis, settings):
    job = client.enqueue_eval(redis, settings, {"options": {}})

    assert job.origin == EVAL_QUEUE
    assert job.timeout == settings.eval_job_timeout


def test_describe_exit_names_signal():
    assert describe_exit(signal.SIGKILL) == (
        "the work process was killed by signal 9 (SIGKILL), e.g. out of memory or `kill -9`"
    )
    assert describe_exit(signal.SIGSEGV) == "the work process was killed by signal 11 (SIGSEGV)"
    assert describe_exit(3 << 8) == "the work process exited with code 3 before reporting a result"


def test_killed_work_process_recorded(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {}})
    redis.set(JOB_LOCK_KEY.format(id=job.id), lock_token(4242))

    on_work_horse_killed(job, 4242, signal.SIGKILL, None)

    error = read_state(redis, job.id)["error"]
    assert error["type"] == "WorkerDied"
    assert "killed by signal 9 (SIGKILL)" in error["message"]
    assert f"POST /v1/jobs/{job.id}/resume" in error["message"]
    assert status_events(redis, job.id)[-1]["status"] == "failed"
    assert not redis.exists(JOB_LOCK_KEY.format(id=job.id))


def test_killed_work_process_with_retries_requeues(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {}}, retries=1)

    on_work_horse_killed(job, 4242, signal.SIGKILL, None)

    last = status_events(redis, job.id)[-1]
    assert last["status"] == "queued"
    assert last["retry"] is True
    assert last["error"]["type"] == "WorkerDied"


def test_job_exception_recorded(redis, settings):
    job = client.enqueue_eval(redis, settings, {"options": {}})

    on_job_failure(job, redis, ValueError, ValueError("dataset 'x' has no valid rows"), None)

    assert read_state(redis, job.id)["error"] == {
        "type": "ValueError",
        "message": "dataset 'x' has no valid rows",
    }


def test_reaper_fails_job_of_dead_worker(redis, settings):
    job = start_abandoned_job(redis, settings)

    reap_abandoned_jobs(redis)

    view = client.describe_job(redis, client.fetch_job(redis, job.id))
    assert view["status"] == "failed"
    assert view["error"]["type"] == "WorkerDied"
    assert view["error"]["message"].startswith("worker train-gone stopped heartbeating (killed?)")
    assert status_events(redis, job.id)[-1]["status"] == "failed"


def test_reaper_retries_job_with_retries_left(redis, settings):
    job = start_abandoned_job(redis, settings, retries=1)

    reap_abandoned_jobs(redis)

    assert client.describe_job(redis, client.fetch_job(redis, job.id))["status"] == "queued"
    assert status_events(redis, job.id)[-1]["retry"] is True


def test_reaper_keeps_live_jobs(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {}})
    worker = build_worker(TRAIN_QUEUE, redis, name="train-alive")
    dequeued, _ = Queue.dequeue_any([Queue(TRAIN_QUEUE, connection=redis)], None, connection=redis)
    worker.prepare_execution(dequeued)
    worker.prepare_job_execution(dequeued)

    reap_abandoned_jobs(redis)

    assert client.describe_job(redis, client.fetch_job(redis, job.id))["status"] == "started"


def test_cancel_queued_job(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {}})

    assert client.cancel(redis, job) == "canceled"
    job = client.fetch_job(redis, job.id)
    assert client.job_status(job) == "canceled"
    assert status_events(redis, job.id)[-1] == {"status": "canceled"}
    with pytest.raises(client.JobStateError, match="already canceled"):
        client.cancel(redis, job)


def test_resume_canceled_queued_job(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {}})
    client.cancel(redis, job)

    client.resume(redis, client.fetch_job(redis, job.id))

    job = client.fetch_job(redis, job.id)
    assert client.job_status(job) == "queued"
    assert job.id in Queue(TRAIN_QUEUE, connection=redis).job_ids
    assert status_events(redis, job.id)[-1] == {"status": "queued", "resumed": True}


def test_resume_rejects_unfinished_jobs(redis, settings):
    job = client.enqueue_eval(redis, settings, {"options": {}})

    with pytest.raises(client.JobStateError, match="is queued"):
        client.resume(redis, job)


def test_resume_failed_eval_job(redis):
    job = enqueue_stand_in(redis, EVAL_QUEUE, stand_in_failing)
    run_queued_jobs(redis, EVAL_QUEUE)
    job = client.fetch_job(redis, job.id)
    assert client.describe_job(redis, job)["error"] == {"type": "RuntimeError", "message": "out of prompts"}

    client.resume(redis, job)

    view = client.describe_job(redis, client.fetch_job(redis, job.id))
    assert view["status"] == "queued"
    assert read_state(redis, job.id).get("error") is None


def test_canceled_result_reads_as_canceled(redis):
    job = enqueue_stand_in(redis, TRAIN_QUEUE, stand_in_canceled)

    run_queued_jobs(redis, TRAIN_QUEUE)

    job = client.fetch_job(redis, job.id)
    assert job.get_status() == JobStatus.FINISHED
    view = client.describe_job(redis, job)
    assert view["status"] == "canceled"
    assert view["result"]["canceled"] is True
    assert view["ended_at"] is not None
    client.resume(redis, job)
    assert client.job_status(client.fetch_job(redis, job.id)) == "queued"


def test_list_jobs_filters_and_drops_expired(redis, settings):
    train = client.enqueue_train(redis, settings, {"options": {}})
    evaluation = client.enqueue_eval(redis, settings, {"options": {}})
    expired = client.enqueue_eval(redis, settings, {"options": {}})
    expired.delete()

    assert [view["id"] for view in client.list_jobs(redis)] == [evaluation.id, train.id]
    assert [view["id"] for view in client.list_jobs(redis, job_type="train")] == [train.id]
    assert client.list_jobs(redis, status="finished") == []
    assert [view["id"] for view in client.list_jobs(redis, limit=1)] == [evaluation.id]


def test_fetch_unknown_job(redis):
    with pytest.raises(client.JobNotFoundError):
        client.fetch_job(redis, "0" * 32)
    with pytest.raises(client.JobNotFoundError, match="32 hexadecimal digits"):
        client.fetch_job(redis, "../etc")


def test_run_lock_excludes_second_holder(redis):
    with hold_run_lock(redis, "a" * 32):
        assert redis.get(JOB_LOCK_KEY.format(id="a" * 32)) == lock_token().encode()
        with pytest.raises(JobAlreadyRunningError), hold_run_lock(redis, "a" * 32, wait=0.2):
            pass
    assert not redis.exists(JOB_LOCK_KEY.format(id="a" * 32))


def test_dead_holder_release_checks_pid(redis):
    key = JOB_LOCK_KEY.format(id="b" * 32)
    redis.set(key, lock_token(4242))

    assert release_dead_holder(redis, "b" * 32, 4343) is False
    assert redis.exists(key)
    assert release_dead_holder(redis, "b" * 32, 4242) is True
    assert not redis.exists(key)


def test_events_read_after_id(redis):
    first = publish_event(redis, "c" * 32, "log", {"message": "one"})
    second = publish_event(redis, "c" * 32, "progress", {"step": 1})

    assert [event.id for event in read_events(redis, "c" * 32)] == [first, second]
    after_first = read_events(redis, "c" * 32, after=first)
    assert [(event.kind, event.data) for event in after_first] == [("progress", {"step": 1})]
    assert redis.ttl(f"adgen:job:{'c' * 32}:events") > 0
    assert json.loads(redis.xrange(f"adgen:job:{'c' * 32}:events")[0][1][b"data"]) == {"message": "one"}


def test_abandoned_error_from_callback(redis, settings):
    job = client.enqueue_train(redis, settings, {"options": {}})
    job.worker_name = "train-host-7"

    on_job_failure(job, redis, AbandonedJobError, AbandonedJobError(), None)

    message = read_state(redis, job.id)["error"]["message"]
    assert message.startswith("worker train-host-7 stopped heartbeating (killed?)")
