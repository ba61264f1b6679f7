"""The scheduler thread: admits requests, decodes all running ones together, one token per step.

Every loop turn: drop cancelled requests, prefill waiting ones while fewer than
`max_concurrent` run, then run one batched decode step per served model and deliver each row's
token. A request keeps the model it was submitted to, so after a hot reload the old model's
batch decodes until its last request ends, next to the new model's batch.

Capacity is `max_concurrent` running plus `max_queued` waiting; `submit` raises EngineBusy
beyond that instead of blocking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from shared.inference.batch import DecodeBatch
from shared.inference.detokenize import IncrementalDetokenizer
from shared.inference.requests import DoneEvent, EngineBusy, ErrorEvent, Generation, TokenEvent
from shared.inference.sampling import TokenSampler
from shared.inference.served import ServedModel

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    """Scheduler-side state of one generation."""

    handle: Generation
    served: ServedModel
    sampler: TokenSampler
    detokenizer: IncrementalDetokenizer
    generated: list[int] = field(default_factory=list)

    def accept(self, token_id: int) -> str | None:
        """Record a generated token, deliver its text, and return a finish reason when it ends the request."""
        self.generated.append(token_id)
        self.sampler.record(token_id)
        if token_id in self.served.stop_token_ids:
            return "stop"
        delta = self.detokenizer.push(token_id)
        if delta:
            self.handle.deliver(TokenEvent(delta))
        if len(self.generated) >= self.handle.params.max_new_tokens:
            return "length"
        if len(self.handle.prompt_ids) + len(self.generated) >= self.served.max_context:
            return "length"
        return None

    def finish(self, reason: str) -> None:
        delta = self.detokenizer.flush()
        if delta:
            self.handle.deliver(TokenEvent(delta))
        handle = self.handle
        handle.deliver(
            DoneEvent(
                text=self.detokenizer.text,
                finish_reason=reason,
                prompt_tokens=len(handle.prompt_ids),
                completion_tokens=len(self.generated),
                model=self.served.name,
                time_to_first_text=handle.first_text_at - handle.submitted_at
                if handle.first_text_at
                else None,
                seconds=time.monotonic() - handle.submitted_at,
            )
        )


@dataclass
class _Group:
    """The running requests of one served model and their shared batch."""

    batch: DecodeBatch
    rows: list[_Request] = field(default_factory=list)


class Scheduler:
    """Owns the generation thread; every model call happens on it."""

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiting: deque[_Request] = deque()
        self._groups: dict[int, _Group] = {}  # By id() of the ServedModel.
        self._running = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="adgen-scheduler", daemon=True)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread; requests still waiting or running get an ErrorEvent."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def submit(self, handle: Generation, served: ServedModel) -> None:
        request = _Request(
            handle=handle,
            served=served,
            sampler=TokenSampler(handle.params, handle.prompt_ids, served.model.device),
            detokenizer=IncrementalDetokenizer(served.tokenizer),
        )
        handle.on_cancel = self._wake.set
        with self._lock:
            if self._stopping:
                raise EngineBusy(self._running, len(self._waiting))
            if self._running + len(self._waiting) >= self.max_concurrent + self.max_queued:
                raise EngineBusy(self._running, len(self._waiting))
            self._waiting.append(request)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._stopping:
                break
            try:
                self._turn()
            except Exception as error:  # A bug here must not stop the thread, or every request would hang.
                logger.exception("scheduler turn failed; ending all current generations")
                self._fail_all(f"generation failed: {error}")
        self._fail_all("the server is shutting down")

    def _turn(self) -> None:
        """Admit waiting requests, then run one decode step per model, or sleep when idle."""
        self._drop_cancelled_waiting()
        self._admit()
        if not self._groups:
            self._wake.wait()
            return
        for key, group in list(self._groups.items()):
            self._step(group)
            if not group.rows:
                del self._groups[key]

    def _drop_cancelled_waiting(self) -> None:
        with self._lock:
            cancelled = [request for request in self._waiting if request.handle.cancelled]
            for request in cancelled:
                self._waiting.remove(request)
        for request in cancelled:
            request.finish("cancelled")

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._running >= self.max_concurrent:
                    return
                request = self._waiting.popleft()
                self._running += 1
            self._prefill(request)

    def _prefill(self, request: _Request) -> None:
        key = id(request.served)
        group = self._groups.get(key) or _Group(DecodeBatch(request.served))
        try:
            cache, logits = group.batch.prefill(request.handle.prompt_ids)
            token = request.sampler.choose(logits)
            reason = request.accept(token)
            if reason is None:
                group.batch.add(cache, token)
        except Exception as error:  # Reported to this request's caller; other requests go on.
            logger.exception("prefill of generation %s failed", request.handle.id)
            self._end(request, error=f"generation failed: {error}")
            return
        if reason is not None:
            self._end(request, reason)
            return
        group.rows.append(request)
        self._groups[key] = group

    def _step(self, group: _Group) -> None:
        alive = [index for index, request in enumerate(group.rows) if not request.handle.cancelled]
        for request in group.rows:
            if request.handle.cancelled:
                self._end(request, "cancelled")
        if len(alive) < len(group.rows):
            group.batch.keep(alive)
            group.rows = [group.rows[index] for index in alive]
        if not group.rows:
            return
        try:
            logits = group.batch.step()
            tokens = self._choose_tokens(group.rows, logits)
        except Exception as error:  # Every request of this batch shares the failed step.
            logger.exception("decode step of %d generations failed", len(group.rows))
            for request in group.rows:
                self._end(request, error=f"generation failed: {error}")
            group.rows = []
            group.batch.keep([])
            return
        group.batch.set_next(tokens)
        keep = []
        for index, (request, token) in enumerate(zip(group.rows, tokens, strict=True)):
            reason = request.accept(token)
            if reason is None:
                keep.append(index)
            else:
                self._end(request, reason)
        if len(keep) < len(group.rows):
            group.batch.keep(keep)
            group.rows = [group.rows[index] for index in keep]

    @staticmethod
    def _choose_tokens(rows: list[_Request], logits: torch.Tensor) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        return [
            greedy[index] if request.sampler.is_plain_greedy else request.sampler.choose(logits[index])
            for index, request in enumerate(rows)
        ]

    def _end(self, request: _Request, reason: str | None = None, error: str | None = None) -> None:
        with self._lock:
            self._running -= 1
        if error is not None:
            request.handle.deliver(ErrorEvent(error))
        else:
            request.finish(reason or "stop")
        logger.debug(
            "generation %s ended (%s) after %d tokens",
            request.handle.id,
            error or reason,
            len(request.generated),
        )

    def _fail_all(self, message: str) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for request in waiting:
            request.handle.deliver(ErrorEvent(message))
        for group in self._groups.values():
            for request in group.rows:
                self._end(request, error=message)
        self._groups.clear()
        with self._lock:
            self._running = 0  # Runs between turns, when every running request is in a group.
