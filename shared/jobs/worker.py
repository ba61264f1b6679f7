"""`adgen worker train|eval`: an rq worker that runs each job in a fresh work process.

rq's SpawnWorker starts every job in a new interpreter (`posix_spawn`, not `fork`), so the GPU memory
of one job is released before the next, and this parent process never imports torch or initialises
CUDA: job functions are named by path (see constants) and only the work process imports them.
Divergences from rq's SpawnWorker:

- While a job runs, the parent heartbeats every JOB_MONITORING_INTERVAL seconds (rq: 30). Each
  heartbeat keeps the job for HEARTBEAT_GRACE seconds past the next one (rq: 60), so the reaper
  fails the job of a killed worker within a minute.
- An idle worker heartbeats, and cleans its queue's registries, more often (see WORKER_TTL).
- A work process that dies without reporting (SIGKILL, out of memory) fails its job with the signal
  named (`failures.on_work_horse_killed`); rq's own record only has the raw wait status.
- Shutdown waits at most a second for rq's command listener (see `JobWorker.unsubscribe`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import Job
from rq.worker import SpawnWorker

from shared import __version__
from shared.jobs.constants import (
    HEARTBEAT_GRACE,
    JOB_MONITORING_INTERVAL,
    JOB_TYPES,
    WORKER_MAINTENANCE_INTERVAL,
    WORKER_TTL,
)
from shared.jobs.failures import on_work_horse_killed
from shared.settings import get_settings

logger = logging.getLogger(__name__)


class JobWorker(SpawnWorker):
    """SpawnWorker whose started jobs expire HEARTBEAT_GRACE seconds after a missed heartbeat."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.job_monitoring_interval + HEARTBEAT_GRACE

    def unsubscribe(self) -> None:
        """Stop listening for rq commands, waiting at most a second for the listener thread.

        NOTE: rq 3.0 starts that thread with a 60 s read timeout and redis-py 8.2's `stop()` waits
        for the read to end, so rq's own version made every shutdown take up to a minute. This copy
        can go once rq bounds that wait itself.
        """
        if self.pubsub_thread and self.pubsub:
            self.pubsub_thread.stop(timeout=1)
            self.pubsub.close()


def redis_address(redis: Redis) -> str:
    """Return host:port/db of a client, without the password a URL may hold."""
    kwargs = redis.connection_pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


def build_worker(queue: str, redis: Redis, name: str | None = None) -> JobWorker:
    return JobWorker(
        [queue],
        connection=redis,
        name=name or f"{queue}-{socket.gethostname()}-{os.getpid()}",
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        maintenance_interval=WORKER_MAINTENANCE_INTERVAL,
        worker_ttl=WORKER_TTL,
        work_horse_killed_handler=on_work_horse_killed,
        log_job_description=False,  # A description would log the whole request at info.
    )


def main(argv: list[str]) -> int:
    from shared.logs import setup_logging

    parser = argparse.ArgumentParser(
        prog="adgen worker", description="Run jobs of one queue, each in a fresh work process."
    )
    parser.add_argument("queue", choices=JOB_TYPES, help="Queue to work on: training or evaluation jobs.")
    parser.add_argument("--name", help="Worker name shown in job errors; default: QUEUE-HOST-PID.")
    parser.add_argument("--burst", action="store_true", help="Exit once the queue is empty.")
    parser.add_argument("--max-jobs", type=int, help="Exit after this many jobs.")
    parser.add_argument("--log-level", default="info", help="Log level: debug, info, warning or error.")
    args = parser.parse_args(argv)
    setup_logging(args.log_level.upper())

    redis = Redis.from_url(get_settings().redis_url)
    worker = build_worker(args.queue, redis, args.name)
    logger.info(
        "adgen worker %s starting: queue %s, redis %s, name %s",
        __version__,
        args.queue,
        redis_address(redis),
        worker.name,
    )
    try:
        worker.work(burst=args.burst, max_jobs=args.max_jobs)
    except RedisConnectionError as error:
        print(f"adgen worker: error: cannot reach Redis at {redis_address(redis)}: {error}", file=sys.stderr)
        return 1
    return 0
