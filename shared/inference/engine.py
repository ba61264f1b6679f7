"""The serving engine: one loaded model, a batching scheduler thread, and hot reload.

Design:

- `Engine(settings)` loads nothing. `load()` (blocking) or `load_in_background()` loads a model
  through shared.modeling.loader and starts the scheduler thread on first use, so the API
  serves /healthz while the weights load.
- `submit()` encodes the prompt with the training template (build_messages / encode_prompt and
  a source prefix, ADGEN's by default), checks it against the model's context, and queues it.
  Every check that can fail happens there, before the caller starts streaming.
- Requests decode together in one batch (see shared.inference.scheduler). At most
  MAX_CONCURRENT_STREAMS run and MAX_QUEUED_STREAMS wait; beyond that `submit` raises EngineBusy.
- A reload swaps the served model once the new one is loaded. Requests already submitted finish
  on the model they started with.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.hparams import ADGEN_SOURCE_PREFIX
from shared.inference.params import GenerationParams
from shared.inference.requests import EngineBusy, FinishCallback, Generation
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.inference.scheduler import Scheduler
    from shared.inference.served import ServedModel

__all__ = ["ContextTooLong", "Engine", "EngineBusy", "EngineStatus", "ModelNotReady"]

logger = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """No model is loaded yet, or loading failed."""


class ContextTooLong(ValueError):
    """The prompt plus max_new_tokens does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, max_context: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.max_context = max_context
        super().__init__(
            f"the prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, "
            f"{prompt_tokens + max_new_tokens} in all, but the model's context is {max_context} tokens; "
            "shorten the prompt or lower max_new_tokens"
        )


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot of the engine for health checks, /v1/models and metrics."""

    state: str  # "idle" (nothing requested yet), "loading", "ready" or "failed".
    model: str | None
    path: str | None
    loaded_at: float | None
    loading: str | None  # The source being loaded, during a load or reload.
    error: str | None  # Message of the last failed load, cleared when a load succeeds.
    running: int
    waiting: int
    max_concurrent: int
    max_queued: int


class Engine:
    """Serve one model at a time to many concurrent generation requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: ServedModel | None = None
        self._scheduler: Scheduler | None = None
        self._state_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loading: str | None = None
        self._error: str | None = None
        self._closed = False

    def _ensure_started(self) -> Scheduler:
        from shared.inference.scheduler import Scheduler

        with self._state_lock:
            if self._closed:
                raise RuntimeError("the engine is closed; create a new Engine to load a model")
            if self._scheduler is None:
                self._scheduler = Scheduler(
                    self.settings.max_concurrent_streams, self.settings.max_queued_streams
                )
                self._scheduler.start()
            return self._scheduler

    def load(self, source: str | None = None, base_model: str | None = None) -> ServedModel:
        """Load `source` (default: the start-up choice) and serve it; blocks until loaded.

        On failure the previous model, if any, keeps serving and the error is kept for status().
        """
        from shared.inference.served import load_served_model, startup_source

        source = source or startup_source(self.settings)
        with self._load_lock:
            self._loading = source
            started = time.monotonic()
            logger.info("loading model %s", source)
            try:
                self._ensure_started()
                served = load_served_model(source, self.settings, base_model=base_model)
            except Exception as error:
                self._error = f"loading {source} failed: {error}"
                raise
            finally:
                if self._loading == source:  # A later request may already be waiting for the lock.
                    self._loading = None
            self._error = None
            previous, self.current = self.current, served
        logger.info(
            "serving model %s from %s (loaded in %.1fs%s)",
            served.name,
            served.path,
            time.monotonic() - started,
            f"; {previous.name} finishes its running requests" if previous else "",
        )
        return served

    def load_in_background(self, source: str | None = None) -> threading.Thread:
        """Start loading `source` on a thread; the current model serves until the new one is ready."""
        from shared.inference.served import startup_source

        source = source or startup_source(self.settings)

        def run() -> None:
            try:
                self.load(source)
            except Exception:  # Kept in status().error and shown by /readyz and /v1/models.
                logger.exception("loading model %s failed", source)

        self._loading = source
        thread = threading.Thread(target=run, name="adgen-model-loader", daemon=True)
        thread.start()
        return thread

    def submit(
        self,
        prompt: str,
        params: GenerationParams,
        source_prefix: str | None = ADGEN_SOURCE_PREFIX,
        system: str | None = None,
        history: Sequence[tuple[str, str]] = (),
        loop: asyncio.AbstractEventLoop | None = None,
        on_finish: FinishCallback | None = None,
    ) -> Generation:
        """Queue a generation for `prompt`; pass `loop` to consume its events with `Generation.stream()`.

        `on_finish` receives the DoneEvent or ErrorEvent on the scheduler thread, also for a
        request whose caller stopped reading (a cancelled stream).

        Raises ModelNotReady, ContextTooLong, or EngineBusy beyond capacity.
        """
        from shared.modeling.template import build_messages

        served, scheduler = self.current, self._scheduler
        if self._closed:
            raise ModelNotReady("the engine is shut down")
        if served is None or scheduler is None:
            raise ModelNotReady(self._not_ready_reason())
        prompt_ids = served.encode(build_messages(prompt, source_prefix, system=system, history=history))
        if len(prompt_ids) + params.max_new_tokens > served.max_context:
            raise ContextTooLong(len(prompt_ids), params.max_new_tokens, served.max_context)
        handle = Generation(prompt_ids, params, served.name, loop=loop, on_finish=on_finish)
        scheduler.submit(handle, served)
        logger.debug("generation %s queued: %d prompt tokens on %s", handle.id, len(prompt_ids), served.name)
        return handle

    def _not_ready_reason(self) -> str:
        if self._loading:
            return f"the model {self._loading} is still loading; retry in a few seconds"
        if self._error:
            return f"no model is loaded: {self._error}"
        return "no model is loaded; load one with POST /v1/models/load"

    def status(self) -> EngineStatus:
        served, scheduler = self.current, self._scheduler
        if self._loading and served is None:
            state = "loading"
        elif served is not None:
            state = "ready"
        elif self._error:
            state = "failed"
        else:
            state = "idle"
        return EngineStatus(
            state=state,
            model=served.name if served else None,
            path=served.path if served else None,
            loaded_at=served.loaded_at if served else None,
            loading=self._loading,
            error=self._error,
            running=scheduler.running if scheduler else 0,
            waiting=scheduler.waiting if scheduler else 0,
            max_concurrent=self.settings.max_concurrent_streams,
            max_queued=self.settings.max_queued_streams,
        )

    def close(self) -> None:
        """Stop the scheduler; running and waiting requests end with an ErrorEvent."""
        self._closed = True
        with self._state_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.stop()
