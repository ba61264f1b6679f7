"""Prometheus metrics of the generation routes, served by GET /metrics.

Metrics are module-level in prometheus-client's default registry, so the process exposes them
once however many apps it builds. The engine gauges read the engine of the app that started
last (`watch_engine`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.inference.engine import Engine
from shared.inference.requests import DoneEvent, ErrorEvent

REQUESTS = Counter(
    "adgen_generation_requests_total",
    "Generation requests by route and HTTP status (200 once a stream starts).",
    ["route", "status"],
)
ERRORS = Counter(
    "adgen_generation_errors_total",
    "Generation requests that failed after the stream started.",
    ["route"],
)
FINISHED = Counter(
    "adgen_generations_finished_total",
    "Generations that ended, by finish reason (stop, length, cancelled).",
    ["route", "finish_reason"],
)
GENERATED_TOKENS = Counter("adgen_generated_tokens_total", "Tokens generated.", ["route"])
TIME_TO_FIRST_TOKEN = Histogram(
    "adgen_time_to_first_token_seconds",
    "Seconds from accepting a request to its first text (a token may hold back part of a character).",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS_PER_SECOND = Histogram(
    "adgen_generation_tokens_per_second",
    "Generated tokens per second of each finished generation, from its first token to its end.",
    ["route"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
RUNNING = Gauge("adgen_generations_running", "Generations decoding now.")
WAITING = Gauge("adgen_generations_waiting", "Generations waiting for a free slot.")
MODEL_READY = Gauge("adgen_model_ready", "1 when a model is loaded and serving, else 0.")


def watch_engine(engine: Engine) -> None:
    RUNNING.set_function(lambda: engine.status().running)
    WAITING.set_function(lambda: engine.status().waiting)
    MODEL_READY.set_function(lambda: 1.0 if engine.current is not None else 0.0)


def record_finish(route: str, event: DoneEvent | ErrorEvent) -> None:
    """Record the end of one generation; the engine calls it on its scheduler thread."""
    if isinstance(event, ErrorEvent):
        ERRORS.labels(route).inc()
        return
    FINISHED.labels(route, event.finish_reason).inc()
    GENERATED_TOKENS.labels(route).inc(event.completion_tokens)
    if event.time_to_first_text is None:
        return
    TIME_TO_FIRST_TOKEN.labels(route).observe(event.time_to_first_text)
    decoding = event.seconds - event.time_to_first_text
    if event.completion_tokens > 1 and decoding > 0:
        TOKENS_PER_SECOND.labels(route).observe((event.completion_tokens - 1) / decoding)


def count_request(route: str, status: int) -> None:
    REQUESTS.labels(route, str(status)).inc()
