"""POST /generate: ad copy for product tags, streamed as server-sent events or returned whole.

Stream events: `token` with {"text": delta} per piece of text, then one `done` with the full
text, finish reason and usage, or one `error` with {"message"} when generation fails after the
stream started. A comment ping every 15 seconds keeps proxies from closing an idle stream.
Everything that can be rejected (validation, context length, capacity, no model) is rejected
with an HTTP status before the first event. A client that disconnects cancels its generation.

The lifespan hook owns the engine. It starts loading the served model after start-up, so that
/healthz responds at once, and it subscribes to the model reload channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from services.api import metrics
from services.api.deps import require_api_key
from services.api.schemas_generation import ErrorData, GenerateRequest, GenerateResponse, TokenData, Usage
from shared.inference.engine import ContextTooLong, Engine, EngineBusy, ModelNotReady
from shared.inference.params import GenerationParams
from shared.inference.reload import ReloadListener
from shared.inference.requests import DoneEvent, ErrorEvent, Generation, GenerationFailed, TokenEvent

logger = logging.getLogger(__name__)

router = APIRouter(tags=["generation"], dependencies=[Depends(require_api_key)])

PING_SECONDS = 15
RETRY_AFTER_SECONDS = 1  # Sent with 429; a slot frees whenever any running generation ends.
DISCONNECT_POLL_SECONDS = 0.5
SSE_HEADERS = {"X-Accel-Buffering": "no"}  # Tells nginx not to buffer the stream.


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = Engine(app.state.settings)
    app.state.engine = engine
    metrics.watch_engine(engine)
    engine.load_in_background()
    listener = ReloadListener(app.state.redis, engine)
    listener.start()
    app.state.reload_listener = listener
    try:
        yield
    finally:
        await run_in_threadpool(listener.stop)
        await run_in_threadpool(engine.close)


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the generation engine is not running")
    return engine


def submit(
    request: Request,
    route: str,
    prompt: str,
    params: GenerationParams,
    source_prefix: str | None,
    system: str | None = None,
    history: list[tuple[str, str]] | None = None,
) -> Generation:
    """Queue a generation, turning each engine rejection into its HTTP error."""
    engine = get_engine(request)
    try:
        handle = engine.submit(
            prompt,
            params,
            source_prefix=source_prefix,
            system=system,
            history=history or (),
            loop=asyncio.get_running_loop(),
            on_finish=partial(metrics.record_finish, route),
        )
    except ModelNotReady as error:
        metrics.count_request(route, 503)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from error
    except ContextTooLong as error:
        metrics.count_request(route, 400)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from error
    except EngineBusy as error:
        metrics.count_request(route, 429)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(error), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from error
    metrics.count_request(route, 200)
    return handle


async def wait_for_result(request: Request, handle: Generation) -> DoneEvent | None:
    """Wait for a non-streamed generation; cancel it and return None if the client disconnects."""
    result = asyncio.ensure_future(handle.result())
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return result.result()
            if await request.is_disconnected():
                return None
    finally:
        if not result.done():
            result.cancel()
        handle.cancel()


def _response_body(event: DoneEvent) -> GenerateResponse:
    return GenerateResponse(
        text=event.text,
        finish_reason=event.finish_reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens),
        model=event.model,
    )


async def _sse_events(handle: Generation) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in handle.stream():
            if isinstance(event, TokenEvent):
                data = TokenData(text=event.text).model_dump()
                yield ServerSentEvent(event="token", data=json.dumps(data, ensure_ascii=False))
            elif isinstance(event, DoneEvent):
                yield ServerSentEvent(event="done", data=_response_body(event).model_dump_json())
            elif isinstance(event, ErrorEvent):
                yield ServerSentEvent(event="error", data=ErrorData(message=event.message).model_dump_json())
    finally:
        handle.cancel()  # The client went away (or the stream ended, where this does nothing).


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        200: {"description": "`text/event-stream` with `token`, `done` and `error` events, or JSON."},
        400: {"description": "The prompt and max_new_tokens exceed the model's context."},
        429: {"description": "All generation slots and queue places are taken; see Retry-After."},
        503: {"description": "No model is loaded yet."},
    },
)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Generate ad copy for product tags."""
    handle = submit(request, "generate", body.content, body.params(), body.source_prefix)
    if body.stream:
        return EventSourceResponse(_sse_events(handle), ping=PING_SECONDS, headers=SSE_HEADERS)
    try:
        event = await wait_for_result(request, handle)
    except GenerationFailed as error:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)
    if event is None:
        return Response(status_code=499)  # Client closed the request, so this response is never read.
    return JSONResponse(_response_body(event).model_dump())
