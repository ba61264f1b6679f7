"""Probes and metrics: GET /healthz (process alive), GET /readyz (model and Redis), GET /metrics.

None of them needs the API key, so orchestrators and Prometheus can call them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Return 200 while the process runs; checks no dependency."""
    return {"status": "ok"}


def _model_problem(request: Request) -> str | None:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return "the generation engine is not running"
    engine_status = engine.status()
    if engine_status.model is not None:
        return None
    if engine_status.error:
        return engine_status.error
    if engine_status.loading:
        return f"{engine_status.loading} is still loading"
    return "no model is loaded"


async def _redis_problem(request: Request) -> str | None:
    try:
        await run_in_threadpool(request.app.state.redis.ping)
    except RedisError as error:
        return f"Redis is unreachable: {error}"
    return None


@router.get("/readyz", responses={503: {"description": "The model is not loaded or Redis is unreachable."}})
async def readyz(request: Request) -> JSONResponse:
    """Return 200 when a model is loaded and Redis replies to PING, else 503 naming what is missing."""
    checks = {"model": _model_problem(request), "redis": await _redis_problem(request)}
    if any(checks.values()):
        problems = {name: problem for name, problem in checks.items() if problem}
        return JSONResponse(
            {"status": "not ready", "problems": problems}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )
    return JSONResponse({"status": "ready", "model": request.app.state.engine.status().model})


@router.get("/metrics", response_class=Response)
def prometheus_metrics() -> Response:
    """Prometheus text exposition of the process's metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
