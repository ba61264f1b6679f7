"""Turn each way a job can fail into an error a user can act on: `{"type": ..., "message": ...}`.

Three places see a failure, and each records it here:

- the work process, when the job raises (rq runs the job's `on_failure` callback there);
- the worker's parent, when its work process dies without reporting (`work_horse_killed_handler`),
  for example after SIGKILL from the kernel's out-of-memory killer;
- the process that cleans rq's started-job registry (the API's reaper or a worker's maintenance),
  when a job's worker stopped heartbeating. rq then runs `on_failure` with `AbandonedJobError`.

A job with automatic retries left is requeued by rq right after; it then gets a `queued` status
event instead of `failed`. This module imports no torch: the worker's parent and the API load it.
"""

from __future__ import annotations

import logging
import os
import signal
from types import TracebackType

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from shared.jobs.locks import release_dead_holder
from shared.jobs.progress import publish_status, update_state

logger = logging.getLogger(__name__)

WORKER_DIED = "WorkerDied"
JOB_TIMEOUT = "JobTimeout"


def record_failure(job: Job, error_type: str, message: str) -> dict[str, str]:
    """Store the job's error and send a `failed` event, or `queued` when rq retries the job."""
    if error_type in {WORKER_DIED, JOB_TIMEOUT}:
        message += f"; resume it with POST /v1/jobs/{job.id}/resume"
    error = {"type": error_type, "message": message}
    update_state(job.connection, job.id, error=error)
    if job.should_retry:
        logger.warning("job %s: %s: %s; retrying (%d left)", job.id, error_type, message, job.retries_left)
        publish_status(
            job.connection, job.id, "queued", retry=True, retries_left=job.retries_left, error=error
        )
    else:
        logger.warning("job %s failed: %s: %s", job.id, error_type, message)
        publish_status(job.connection, job.id, "failed", error=error)
    return error


def describe_exit(wait_status: int | None) -> str:
    """Say how a work process ended, from the status that `os.wait4` returned."""
    if wait_status is not None and os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        cause = ", e.g. out of memory or `kill -9`" if number == signal.SIGKILL else ""
        return f"the work process was killed by signal {number} ({name}){cause}"
    if wait_status is not None and os.WIFEXITED(wait_status):
        return f"the work process exited with code {os.WEXITSTATUS(wait_status)} before reporting a result"
    return f"the work process ended unexpectedly (wait status {wait_status})"


def on_work_horse_killed(job: Job, pid: int | None, wait_status: int | None, rusage: object) -> None:
    """rq `work_horse_killed_handler`: runs in the worker's parent when its work process died."""
    if pid and release_dead_holder(job.connection, job.id, pid):
        logger.info("job %s: released the run lock of dead work process %d", job.id, pid)
    record_failure(job, WORKER_DIED, describe_exit(wait_status))


def on_job_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """rq `on_failure` callback of every job; see the module docstring for where it runs."""
    if exc_type is not None and issubclass(exc_type, AbandonedJobError):
        worker = job.worker_name or "unknown"
        record_failure(job, WORKER_DIED, f"worker {worker} stopped heartbeating (killed?)")
    elif exc_type is not None and issubclass(exc_type, JobTimeoutException):
        record_failure(job, JOB_TIMEOUT, f"the job ran longer than its timeout of {job.timeout} s")
    else:
        error_type = exc_type.__name__ if exc_type else "Error"
        record_failure(job, error_type, str(exc_value) or error_type)
