"""POST /v1/chat/completions in the OpenAI format, so the official `openai` client can stream ads.

The last user message carries the product tags and gets the ADGEN source prefix, as in /generate.
Clients set `source_prefix` and `repetition_penalty` through the openai client's `extra_body`.
Divergences from the OpenAI API: one choice only (`n` = 1), no `stop` sequences, no tools, and
`model` must be the id of the served model. A stream that fails after it started sends a chunk
with an `error` object, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from services.api.deps import require_api_key
from services.api.routes.generate import PING_SECONDS, SSE_HEADERS, get_engine, submit, wait_for_result
from services.api.schemas_generation import ChatCompletionRequest
from shared.inference.requests import DoneEvent, ErrorEvent, Generation, GenerationFailed, TokenEvent

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

ROUTE = "chat_completions"
_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status_code: int, message: str, param: str | None = None, headers=None) -> JSONResponse:
    """Return an error in the OpenAI format, which the openai client turns into its exceptions."""
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status_code, "server_error"),
            "param": param,
            "code": status_code,
        }
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


def _usage(event: DoneEvent) -> dict[str, int]:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


async def _chunks(handle: Generation, body: ChatCompletionRequest, header: dict) -> AsyncIterator[dict]:
    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {"data": json.dumps({**header, "choices": [choice]}, ensure_ascii=False)}

    include_usage = body.stream_options is not None and body.stream_options.include_usage
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in handle.stream():
            if isinstance(event, TokenEvent):
                yield chunk({"content": event.text})
            elif isinstance(event, DoneEvent):
                yield chunk({}, event.finish_reason)
                if include_usage:
                    yield {"data": json.dumps({**header, "choices": [], "usage": _usage(event)})}
            elif isinstance(event, ErrorEvent):
                error = {"message": event.message, "type": "server_error", "param": None, "code": 500}
                yield {"data": json.dumps({"error": error}, ensure_ascii=False)}
        yield {"data": "[DONE]"}
    finally:
        handle.cancel()


@router.post("/chat/completions", responses={200: {"description": "A chat.completion, or chunks as SSE."}})
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Generate ad copy for the tags in the last user message, OpenAI style."""
    served = get_engine(request).current
    if served is not None and body.model != served.name:
        return openai_error(
            status.HTTP_404_NOT_FOUND,
            f"model {body.model!r} is not served; the served model is {served.name!r} "
            "(GET /v1/models lists it, POST /v1/models/load switches models)",
            param="model",
        )
    system, history, prompt = body.conversation()
    try:
        handle = submit(request, ROUTE, prompt, body.params(), body.source_prefix, system, history)
    except HTTPException as error:
        return openai_error(error.status_code, str(error.detail), headers=error.headers)

    header = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": handle.model,
    }
    if body.stream:
        return EventSourceResponse(_chunks(handle, body, header), ping=PING_SECONDS, headers=SSE_HEADERS)
    try:
        event = await wait_for_result(request, handle)
    except GenerationFailed as error:
        return openai_error(status.HTTP_500_INTERNAL_SERVER_ERROR, str(error))
    if event is None:
        return Response(status_code=499)  # Client closed the request, so this response is never read.
    message = {"role": "assistant", "content": event.text}
    choice = {"index": 0, "message": message, "finish_reason": event.finish_reason}
    return JSONResponse({**header, "object": "chat.completion", "choices": [choice], "usage": _usage(event)})
