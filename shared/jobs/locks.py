"""The run lock: at most one work process runs a given job, even across a resume or a retry.

A killed work process cannot release its lock, so the lock expires RUN_LOCK_TTL seconds after its
last refresh. The worker's parent releases it at once when its work process dies, so an
automatic retry does not wait for the expiry. The token names the host and process holding it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from shared.jobs.constants import JOB_LOCK_KEY, RUN_LOCK_REFRESH, RUN_LOCK_TTL

logger = logging.getLogger(__name__)


class JobAlreadyRunningError(RuntimeError):
    """Another work process holds the job's run lock."""


def lock_token(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _lock(redis: Redis, job_id: str) -> Lock:
    return Lock(redis, JOB_LOCK_KEY.format(id=job_id), timeout=RUN_LOCK_TTL, thread_local=False)


@contextmanager
def hold_run_lock(redis: Redis, job_id: str, wait: float = RUN_LOCK_TTL + RUN_LOCK_REFRESH) -> Iterator[None]:
    """Hold the job's run lock while the block runs; `wait` (seconds) lets a stale lock expire first."""
    lock = _lock(redis, job_id)
    token = lock_token()
    if not lock.acquire(blocking=True, blocking_timeout=wait, token=token):
        holder = redis.get(lock.name)
        raise JobAlreadyRunningError(
            f"job {job_id} is already running in another work process ({holder!r}); "
            "wait for it to end or cancel it first"
        )
    stop = threading.Event()
    refresher = threading.Thread(
        target=_refresh_until, args=(lock, job_id, stop), name=f"run-lock-{job_id}", daemon=True
    )
    refresher.start()
    try:
        yield
    finally:
        stop.set()
        refresher.join()
        try:
            lock.release()
        except LockError:
            logger.warning("job %s: run lock was lost before release", job_id)


def _refresh_until(lock: Lock, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(RUN_LOCK_REFRESH):
        try:
            lock.reacquire()
        except (LockError, RedisError) as error:
            logger.error("job %s: could not refresh the run lock: %s", job_id, error)


def release_dead_holder(redis: Redis, job_id: str, pid: int) -> bool:
    """Release the job's run lock if process `pid` of this host holds it; returns whether it did."""
    try:
        _lock(redis, job_id).do_release(lock_token(pid))
    except LockError:
        return False
    return True
