"""Progress, errors and events of a job, kept in Redis next to rq's job hash.

Each job has a state hash (latest progress, error, work process, follow-up job ids), which
GET /v1/jobs reads, and a Redis Stream of `progress`, `log` and `status` events, which
GET /v1/jobs/{id}/events replays. Stream ids are the SSE event ids, so a client that reconnects with
`Last-Event-ID` reads on from the event it saw last. Both keys expire FAILURE_TTL after their last
write. rq's `job.meta` is not used for this: the worker's parent saves its stale copy of the job,
meta included, when it retries a job, which would overwrite what the work process wrote.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from shared.jobs.constants import EVENTS_MAXLEN, FAILURE_TTL, JOB_EVENTS_KEY, JOB_STATE_KEY

logger = logging.getLogger(__name__)

EVENT_KINDS = ("progress", "log", "status")
TERMINAL_STATUSES = frozenset({"finished", "failed", "canceled"})
# The stream id before the first event: XREAD after it returns the whole stream.
STREAM_START = "0-0"


@dataclass(frozen=True)
class JobEvent:
    id: str
    kind: str
    data: dict[str, Any]


def events_key(job_id: str) -> str:
    return JOB_EVENTS_KEY.format(id=job_id)


def state_key(job_id: str) -> str:
    return JOB_STATE_KEY.format(id=job_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_entries(entries: Any) -> list[JobEvent]:
    """Build events from stream entries, as XRANGE returns them or XREAD per stream."""
    events = []
    for entry_id, fields in entries or []:
        decoded = {_text(key): _text(value) for key, value in fields.items()}
        data = json.loads(decoded.get("data", "{}"))
        events.append(JobEvent(id=_text(entry_id), kind=decoded.get("event", "log"), data=data))
    return events


def publish_event(redis: Redis, job_id: str, kind: str, data: dict[str, Any]) -> str:
    """Append an event to the job's stream and return its id."""
    key = events_key(job_id)
    with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(
            key,
            {"event": kind, "data": json.dumps(data, ensure_ascii=False)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        pipe.expire(key, FAILURE_TTL)
        event_id, _ = pipe.execute()
    return _text(event_id)


def read_events(redis: Redis, job_id: str, after: str = STREAM_START, count: int = 1000) -> list[JobEvent]:
    """Return up to `count` events after the id `after`, oldest first, without blocking."""
    return parse_entries(redis.xrange(events_key(job_id), min=f"({after}", max="+", count=count))


def update_state(redis: Redis, job_id: str, **values: Any) -> None:
    """Store JSON values in the job's state hash; a None value deletes that field."""
    key = state_key(job_id)
    with redis.pipeline(transaction=False) as pipe:
        for name, value in values.items():
            if value is None:
                pipe.hdel(key, name)
            else:
                pipe.hset(key, name, json.dumps(value, ensure_ascii=False))
        pipe.expire(key, FAILURE_TTL)
        pipe.execute()


def read_state(redis: Redis, job_id: str) -> dict[str, Any]:
    return {_text(name): json.loads(value) for name, value in redis.hgetall(state_key(job_id)).items()}


def publish_status(redis: Redis, job_id: str, status: str, **details: Any) -> str:
    """Send a `status` event; `details` add context such as the error or the result."""
    return publish_event(redis, job_id, "status", {"status": status, **details})


class JobReporter:
    """Publishes one job's progress and log lines from its work process."""

    def __init__(self, redis: Redis, job_id: str):
        self.redis = redis
        self.job_id = job_id

    def progress(self, values: dict[str, Any]) -> None:
        update_state(self.redis, self.job_id, progress=values)
        publish_event(self.redis, self.job_id, "progress", values)

    def log(self, message: str, level: str = "info") -> None:
        publish_event(
            self.redis, self.job_id, "log", {"level": level, "message": message, "time": time.time()}
        )

    def status(self, status: str, **details: Any) -> None:
        publish_status(self.redis, self.job_id, status, **details)


class EventLogHandler(logging.Handler):
    """Send log records of a job's work process as `log` events of that job.

    A record that cannot be sent is dropped after `logging.Handler.handleError` reports it on
    stderr, so a Redis failure never fails the training that logged it.
    """

    def __init__(self, reporter: JobReporter, level: int = logging.INFO):
        super().__init__(level)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reporter.log(record.getMessage(), level=record.levelname.lower())
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)
