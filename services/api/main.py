"""The HTTP API: jobs, generation, the OpenAI-compatible routes and the playground page.

Job routes never import torch: they enqueue work by name and read results from Redis and the
volumes. The generation engine loads the served model in the background after start-up.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis import Redis

from shared import __version__
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; the model is loaded by the inference lifespan, not here."""
    from services.api.routes import generate, health, jobs, models, openai_compat, page

    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_address = app.state.redis.connection_pool.connection_kwargs
        logger.info(
            "adgen API %s starting (redis %s:%s, volumes %s)",
            __version__,
            redis_address.get("host"),
            redis_address.get("port"),
            settings.volumes_dir,
        )
        async with AsyncExitStack() as stack:
            for hook in (jobs.lifespan, generate.lifespan):
                await stack.enter_async_context(hook(app))
            yield
        app.state.redis.close()
        logger.info("adgen API stopped")

    app = FastAPI(title="adgen-stack", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    for module in (health, jobs, generate, openai_compat, models, page):
        app.include_router(module.router)
    return app


def main(argv: list[str]) -> int:
    import uvicorn

    from shared.logs import setup_logging

    parser = argparse.ArgumentParser(prog="adgen serve", description="Run the adgen HTTP API.")
    parser.add_argument(
        "--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 in a container)."
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on.")
    parser.add_argument("--log-level", default="info", help="Log level: debug, info, warning or error.")
    args = parser.parse_args(argv)
    setup_logging(args.log_level.upper())
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, log_config=None)
    return 0
