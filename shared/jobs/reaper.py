"""Fail started jobs whose worker died without a word, so no job stays `started` forever.

A worker's parent heartbeats every JOB_MONITORING_INTERVAL seconds while its work process runs.
Each heartbeat pushes the job's expiry in rq's started-job registry HEARTBEAT_GRACE seconds past the
next one (see `JobWorker.get_heartbeat_ttl`). rq's registry cleanup then fails, or retries, every
started job whose expiry passed and runs its `on_failure` callback with `AbandonedJobError`, which
records "worker <name> stopped heartbeating". Idle workers run that cleanup in their maintenance.
The API also runs it every REAPER_INTERVAL seconds, because no other worker may be idle.
"""

from __future__ import annotations

from redis import Redis
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from shared.jobs.constants import JOB_TYPES


def reap_abandoned_jobs(redis: Redis) -> None:
    """Run rq's started-job cleanup on every job queue. Safe in any thread."""
    for queue_name in JOB_TYPES:
        # rq's default death penalty uses SIGALRM, which only the main thread may set.
        registry = StartedJobRegistry(queue_name, connection=redis, death_penalty_class=TimerDeathPenalty)
        registry.cleanup()
