"""A small client of POST /generate: one timed stream, or many at once on threads."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from shared.hparams import ADGEN_SOURCE_PREFIX

REQUEST_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class StreamRun:
    """One generation as its client saw it. Times are seconds from the start of the request or call."""

    tokens: int  # Generated tokens as the server counts them (the stop token included).
    seconds: float
    first_text_seconds: float | None
    text: str
    finish_reason: str

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Yield the events of server-sent-event lines, skipping comments (pings)."""
    event: str = "message"
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("id:"):
            event_id = line.removeprefix("id:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


def generate_body(prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """Return the body of a greedy, streamed /generate request with the ADGEN source prefix."""
    return {
        "content": prompt,
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "source_prefix": ADGEN_SOURCE_PREFIX,
        "stream": True,
    }


def stream_generate(client: httpx.Client, prompt: str, max_new_tokens: int) -> StreamRun:
    """Stream one greedy generation from /generate and time it at the client."""
    started = time.perf_counter()
    first_text = None
    with client.stream("POST", "/generate", json=generate_body(prompt, max_new_tokens)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"/generate returned {response.status_code}: {response.read().decode()}")
        for sse in parse_sse(response.iter_lines()):
            if sse.event == "token" and first_text is None:
                first_text = time.perf_counter() - started
            elif sse.event == "error":
                raise RuntimeError(f"/generate sent an error event: {sse.data}")
            elif sse.event == "done":
                done = json.loads(sse.data)
                return StreamRun(
                    tokens=done["usage"]["completion_tokens"],
                    seconds=time.perf_counter() - started,
                    first_text_seconds=first_text,
                    text=done["text"],
                    finish_reason=done["finish_reason"],
                )
    raise RuntimeError("/generate ended its stream without a done event")


def run_concurrent_streams(
    base_url: str, prompts: list[str], max_new_tokens: int
) -> tuple[list[StreamRun], float]:
    """Stream one generation per prompt, all at once on threads, and return the runs and the wall time.

    The wall time runs from the moment every thread is connected and released together to the end
    of the last stream.
    """
    barrier = threading.Barrier(len(prompts) + 1, timeout=REQUEST_TIMEOUT_SECONDS)
    results: list[StreamRun | BaseException | None] = [None] * len(prompts)

    def work(index: int) -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
                client.get("/healthz").raise_for_status()  # Opens the connection before the clock starts.
                barrier.wait()
                results[index] = stream_generate(client, prompts[index], max_new_tokens)
        except BaseException as error:  # Re-raised on the calling thread below.
            results[index] = error
            barrier.abort()  # Releases the others at once if the clock has not started yet.

    threads = [threading.Thread(target=work, args=(index,), daemon=True) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # A thread failed, and its error is raised below.
        barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    runs = []
    for result in results:
        if not isinstance(result, StreamRun):
            raise RuntimeError(f"a concurrent stream failed: {result!r}")
        runs.append(result)
    return runs, wall
