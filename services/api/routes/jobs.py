"""Jobs API: queue training and evaluation, follow them, cancel and resume them.

Routes that only call Redis and rq are plain `def`s, which FastAPI runs in its thread pool, where
the synchronous client may block. The event stream is async and reads with redis.asyncio, so a
waiting client keeps no thread busy. A router dependency turns an unreachable Redis into 503 on every
route, so app-wide exception handlers are not needed. The lifespan starts the reaper, which fails
started jobs whose worker died.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from redis import Redis
from redis import asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.job import Job
from sse_starlette import EventSourceResponse

from services.api.deps import get_app_settings, get_redis, require_api_key
from services.api.schemas.jobs import EvalJobCreate, JobCreated, JobList, JobPublic, TrainJobCreate
from shared.jobs import client
from shared.jobs.client import JobNotFoundError, JobStateError, JobStatusName, JobType
from shared.jobs.constants import EVENTS_BLOCK_MS, REAPER_INTERVAL, TRAIN_QUEUE
from shared.jobs.progress import STREAM_START, TERMINAL_STATUSES, JobEvent, events_key, parse_entries
from shared.jobs.reaper import reap_abandoned_jobs
from shared.jobs.validation import check_base_model, check_eval_job, check_train_job, field_error
from shared.settings import Settings

logger = logging.getLogger(__name__)

_STREAM_ID = re.compile(r"\d+(-\d+)?")


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]


def redis_errors_as_503(settings: SettingsDep) -> Iterator[None]:
    """Turn an unreachable Redis into a 503 that names its address, instead of a 500."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as error:
        address = urlsplit(settings.redis_url)
        logger.warning(
            "job route failed, Redis unreachable at %s:%s: %s", address.hostname, address.port, error
        )
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"Redis is unreachable at {address.hostname}:{address.port}, so jobs cannot be queued "
            "or read; retry once it is back (check REDIS_URL and that Redis runs)",
        ) from error


router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key), Depends(redis_errors_as_503)]
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the async Redis client of event streams and run the reaper until shutdown."""
    settings: Settings = app.state.settings
    app.state.jobs_async_redis = _async_client(settings)
    reaper = asyncio.create_task(_reap_periodically(app.state.redis), name="jobs-reaper")
    try:
        yield
    finally:
        reaper.cancel()
        with suppress(asyncio.CancelledError):
            await reaper
        await app.state.jobs_async_redis.aclose()


def _async_client(settings: Settings) -> redis_asyncio.Redis:
    # The socket timeout must outlast one blocking XREAD.
    return redis_asyncio.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=EVENTS_BLOCK_MS / 1000 + 5
    )


async def _reap_periodically(redis: Redis) -> None:
    unreachable = False
    while True:
        try:
            await anyio.to_thread.run_sync(reap_abandoned_jobs, redis)
        except RedisError as error:
            if not unreachable:
                logger.warning("reaper: Redis unreachable (%s); retrying every %d s", error, REAPER_INTERVAL)
            unreachable = True
        except Exception:
            logger.exception("reaper: cleanup failed; retrying in %d s", REAPER_INTERVAL)
        else:
            if unreachable:
                logger.info("reaper: Redis reachable again")
            unreachable = False
        await asyncio.sleep(REAPER_INTERVAL)


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def _fetch(redis: Redis, job_id: str) -> Job:
    try:
        return client.fetch_job(redis, job_id)
    except JobNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error


def _public(view: dict) -> JobPublic:
    """Add the job's URLs to a view from `client.describe_job`."""
    path = _job_path(view["id"])
    return JobPublic.model_validate({**view, "url": path, "events_url": f"{path}/events"})


def _created(job: Job, response: Response) -> JobCreated:
    response.headers["Location"] = _job_path(job.id)
    return JobCreated(id=job.id, type=job.origin, status="queued", url=_job_path(job.id))


@router.post("/train", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def create_train_job(
    body: TrainJobCreate,
    response: Response,
    settings: SettingsDep,
    redis: RedisDep,
) -> JobCreated:
    """Queue a fine-tuning job; its adapter goes to the adapters volume under the job id."""
    errors = check_train_job(body, body.model_name_or_path, body.eval, settings)
    if errors:
        raise RequestValidationError(errors)
    job = client.enqueue_train(redis, settings, body.to_spec(), retries=body.retries)
    return _created(job, response)


@router.post("/eval", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def create_eval_job(
    body: EvalJobCreate,
    response: Response,
    settings: SettingsDep,
    redis: RedisDep,
) -> JobCreated:
    """Queue an evaluation of a base model or of a finished training job's adapter."""
    errors = check_eval_job(body, body.model_name_or_path, settings)
    if errors:
        raise RequestValidationError(errors)
    model = body.model_name_or_path
    if body.train_job_id is not None:
        model = _training_base_model(redis, body, settings)
    job = client.enqueue_eval(redis, settings, body.to_spec(model))
    return _created(job, response)


def _training_base_model(redis: Redis, body: EvalJobCreate, settings: Settings) -> str | None:
    """Check that `train_job_id` is a finished training job and return its base model."""
    assert body.train_job_id is not None
    train_job = _fetch(redis, body.train_job_id)
    loc = ("body", "train_job_id")
    if train_job.origin != TRAIN_QUEUE:
        raise RequestValidationError(
            [field_error(loc, "this job is an evaluation, not a training", body.train_job_id)]
        )
    train_status = client.job_status(train_job)
    if train_status != "finished":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"training job {train_job.id} is {train_status}; evaluate it once it is finished",
        )
    trained_on = client.job_spec(train_job).get("model_name_or_path")
    if body.model_name_or_path is not None and body.model_name_or_path != (trained_on or settings.base_model):
        message = (
            f"training job {train_job.id} trained on {trained_on or settings.base_model}; omit this field"
        )
        raise RequestValidationError(
            [field_error(("body", "model_name_or_path"), message, body.model_name_or_path)]
        )
    errors = check_base_model(trained_on, settings, ("body", "train_job_id"))
    if errors:
        raise RequestValidationError(errors)
    return trained_on


@router.get("", response_model=JobList)
def list_jobs(
    redis: RedisDep,
    job_type: Annotated[JobType | None, Query(alias="type", description="Only jobs of this type.")] = None,
    job_status: Annotated[
        JobStatusName | None, Query(alias="status", description="Only jobs in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Jobs returned at most, newest first.")] = 100,
) -> JobList:
    views = client.list_jobs(redis, job_type=job_type, status=job_status, limit=limit)
    return JobList(jobs=[_public(view) for view in views])


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, redis: RedisDep) -> JobPublic:
    return _public(client.describe_job(redis, _fetch(redis, job_id)))


@router.delete("/{job_id}", response_model=JobPublic)
def cancel_job(job_id: str, response: Response, redis: RedisDep) -> JobPublic:
    """Cancel a queued job (200), or stop a started one after its current step (202)."""
    job = _fetch(redis, job_id)
    try:
        outcome = client.cancel(redis, job)
    except JobStateError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    response.status_code = status.HTTP_200_OK if outcome == "canceled" else status.HTTP_202_ACCEPTED
    return _public(client.describe_job(redis, client.fetch_job(redis, job_id)))


@router.post("/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def resume_job(job_id: str, response: Response, redis: RedisDep) -> JobCreated:
    """Queue a failed or canceled job again: training continues from its newest checkpoint."""
    job = _fetch(redis, job_id)
    try:
        client.resume(redis, job)
    except JobStateError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return _created(job, response)


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: str,
    request: Request,
    redis: RedisDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID", description="Id of the last event received; the stream goes on after it."
        ),
    ] = None,
) -> EventSourceResponse:
    """Stream `progress`, `log` and `status` events until the job ends (server-sent events).

    Each event's id is its Redis Stream id. A client that reconnects with `Last-Event-ID` gets the
    events after that one; without it, the stream starts with the job's first event.
    """
    if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id):
        message = "expected an event id as sent by this stream, e.g. 1733340000000-0"
        raise RequestValidationError([field_error(("header", "Last-Event-ID"), message, last_event_id)])
    await anyio.to_thread.run_sync(_fetch, redis, job_id)
    aredis = getattr(request.app.state, "jobs_async_redis", None) or _async_client(request.app.state.settings)
    return EventSourceResponse(_stream_events(aredis, redis, job_id, last_event_id or STREAM_START))


async def _stream_events(
    aredis: redis_asyncio.Redis, redis: Redis, job_id: str, cursor: str
) -> AsyncIterator[dict[str, str]]:
    """Yield stored events after `cursor`, then live ones, until a final status event."""
    key = events_key(job_id)
    try:
        while True:
            reply: Any = await aredis.xread({key: cursor}, count=100, block=EVENTS_BLOCK_MS)
            events = parse_entries(reply[0][1] if reply else [])
            if not events and await anyio.to_thread.run_sync(_has_ended, redis, job_id):
                # The job may have ended between the read and the check: send what arrived since.
                for event in parse_entries(await aredis.xrange(key, min=f"({cursor}", max="+")):
                    yield _sse(event)
                return
            for event in events:
                cursor = event.id
                yield _sse(event)
                final = event.kind == "status" and event.data.get("status") in TERMINAL_STATUSES
                if final and not await _status_follows(aredis, key, event.id):
                    return
    except RedisError as error:
        logger.warning("job %s: event stream stopped, Redis failed: %s", job_id, error)
        message = "Redis became unreachable; reconnect with Last-Event-ID once it is back"
        yield {"event": "error", "data": json.dumps({"message": message})}


def _sse(event: JobEvent) -> dict[str, str]:
    return {"id": event.id, "event": event.kind, "data": json.dumps(event.data, ensure_ascii=False)}


async def _status_follows(aredis: redis_asyncio.Redis, key: str, event_id: str) -> bool:
    """Tell whether a later status event exists, as after a resume of a failed job."""
    later = parse_entries(await aredis.xrange(key, min=f"({event_id}", max="+"))
    return any(event.kind == "status" for event in later)


def _has_ended(redis: Redis, job_id: str) -> bool:
    try:
        job = client.fetch_job(redis, job_id)
    except JobNotFoundError:
        return True
    return client.job_status(job) in TERMINAL_STATUSES
