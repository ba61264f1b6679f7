"""Hot reload from Redis: a thread that loads the model a message on MODEL_RELOAD_CHANNEL names.

A message is JSON `{"path": "...", "name": "..."}` (the serve follow-up of a training job sends
both; the path wins). Pub/sub delivers only to subscribers connected at publish time. A message
sent while Redis or the API is down is therefore lost, and the API keeps its current model.
"""

from __future__ import annotations

import json
import logging
import threading

from redis import Redis
from redis.exceptions import RedisError

from shared.inference.engine import Engine
from shared.inference.served import LoadTargetError, resolve_load_target
from shared.jobs.constants import MODEL_RELOAD_CHANNEL

logger = logging.getLogger(__name__)

RETRY_SECONDS = (1, 2, 5, 10, 30)  # Waits between reconnection attempts; the last one repeats.


class ReloadListener:
    """Subscribe to MODEL_RELOAD_CHANNEL on a daemon thread and reload the engine on each message."""

    def __init__(self, redis: Redis, engine: Engine, channel: str = MODEL_RELOAD_CHANNEL) -> None:
        self.redis = redis
        self.engine = engine
        self.channel = channel
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adgen-reload-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                if failures:
                    logger.info("reconnected to Redis; listening on %s again", self.channel)
                failures = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self.handle(message["data"])
            except RedisError as error:
                self.subscribed.clear()
                if failures == 0:  # Logged once per outage, not on every retry.
                    logger.warning("model reload channel unavailable (%s); retrying", error)
                self._stop.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
            finally:
                pubsub.close()

    def handle(self, data: bytes | str) -> None:
        """Start loading the model one message names; an invalid message is logged and skipped."""
        try:
            message = json.loads(data)
            path, name = message.get("path"), message.get("name")
            target = resolve_load_target(path, None if path else name, self.engine.settings)
        except (ValueError, AttributeError, FileNotFoundError, LoadTargetError) as error:
            logger.warning("ignoring reload message %r on %s: %s", data, self.channel, error)
            return
        logger.info("reload requested on %s: %s", self.channel, target)
        self.engine.load_in_background(str(target))
