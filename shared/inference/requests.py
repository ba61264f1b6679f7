"""A generation request as its caller sees it: the events it receives and how to cancel it.

Events are produced on the scheduler thread and delivered either to an asyncio queue (the API,
bound to the caller's event loop) or to a thread-safe queue (the terminal and tests).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from shared.inference.params import GenerationParams


@dataclass(frozen=True)
class TokenEvent:
    """New text of a stream; never empty and never part of a character."""

    text: str


@dataclass(frozen=True)
class DoneEvent:
    """The end of a generation: the full text (all token texts joined) and why it stopped."""

    text: str
    finish_reason: str  # "stop" (a stop token), "length" (max_new_tokens or context) or "cancelled".
    prompt_tokens: int
    completion_tokens: int  # Generated tokens, the stop token included.
    model: str
    time_to_first_text: float | None = None  # Seconds from submit to the first TokenEvent; None without text.
    seconds: float = 0.0  # Seconds from submit to this event.


@dataclass(frozen=True)
class ErrorEvent:
    """A failure after the generation started; no event follows it."""

    message: str


Event = TokenEvent | DoneEvent | ErrorEvent
FinishCallback = Callable[["DoneEvent | ErrorEvent"], None]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


class EngineBusy(RuntimeError):
    """All generation slots and queue places are taken; retry later."""

    def __init__(self, running: int, waiting: int) -> None:
        super().__init__(
            f"the server is at capacity ({running} generations running, {waiting} waiting); retry shortly"
        )


class GenerationFailed(RuntimeError):
    """Raised by `Generation.result` when the generation ended with an ErrorEvent."""


class Generation:
    """Handle of one submitted request: iterate its events, or cancel it."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        model: str,
        loop: asyncio.AbstractEventLoop | None = None,
        on_finish: FinishCallback | None = None,
    ) -> None:
        self.id = next(_ids)
        self.submitted_at = time.monotonic()
        self.first_text_at: float | None = None
        self.prompt_ids = prompt_ids
        self.params = params
        self.model = model
        self._cancelled = threading.Event()
        self._finished = False
        self._loop = loop
        self._async_events: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.on_cancel = lambda: None  # Set by the scheduler to wake itself up.
        # Called on the scheduler thread with the last event, also when the caller stopped reading events.
        self._on_finish = on_finish

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Stop generating; the scheduler drops the request before its next decode step."""
        if not self._finished and not self._cancelled.is_set():
            self._cancelled.set()
            self.on_cancel()

    def deliver(self, event: Event) -> None:
        """Pass an event to the caller; called on the scheduler thread."""
        if isinstance(event, TokenEvent):
            if self.first_text_at is None:
                self.first_text_at = time.monotonic()
        else:
            self._finished = True
            self._report_finish(event)
        if self._loop is None or self._async_events is None:
            self._events.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_events.put_nowait, event)
        except RuntimeError:  # The caller's event loop is closed, so no one reads the events any more.
            self._cancelled.set()

    def _report_finish(self, event: DoneEvent | ErrorEvent) -> None:
        if self._on_finish is None:
            return
        try:
            self._on_finish(event)
        except Exception:  # A metrics callback must not break the scheduler.
            logger.exception("on_finish callback of generation %s failed", self.id)

    def __iter__(self) -> Iterator[Event]:
        """Yield events until the DoneEvent or ErrorEvent, blocking the calling thread."""
        while True:
            event = self._events.get()
            yield event
            if not isinstance(event, TokenEvent):
                return

    async def stream(self) -> AsyncIterator[Event]:
        """Yield events until the DoneEvent or ErrorEvent; needs a handle submitted with `loop`."""
        if self._async_events is None:
            raise RuntimeError("this generation was submitted without an event loop; iterate it instead")
        while True:
            event = await self._async_events.get()
            yield event
            if not isinstance(event, TokenEvent):
                return

    async def result(self) -> DoneEvent:
        """Wait for the end of an async generation and return its DoneEvent."""
        async for event in self.stream():
            if isinstance(event, ErrorEvent):
                raise GenerationFailed(event.message)
            if isinstance(event, DoneEvent):
                return event
        raise GenerationFailed("the generation ended without a result")
