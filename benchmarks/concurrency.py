"""Concurrency: total tokens per second of 1, 4 and 8 simultaneous /generate streams.

The engine decodes concurrent requests in one batch, so several streams should share each
decode step instead of queueing behind each other. The levels run in turn within a round, in
reversed order every other round, and each level's figure is the median over rounds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.http_client import StreamRun, run_concurrent_streams
from benchmarks.report import TITLES, Section
from benchmarks.stats import median, paired_ratio

logger = logging.getLogger(__name__)

TARGET = 3.0  # 8 streams give at least 3x the tokens per second of one stream.
BARE_STEP_CONTEXT = 128  # Tokens in the KV cache of the bare-step timing, about a prompt and 64 new tokens.


def _total_rate(runs: list[StreamRun], wall: float) -> float:
    return sum(run.tokens for run in runs) / wall


def engine_total_rate(engine, prompts: list[str], max_new_tokens: int) -> float:
    """Submit every prompt to an in-process `Engine` at once and return the total tokens per second."""
    from shared.inference.params import GenerationParams
    from shared.inference.requests import DoneEvent

    params = GenerationParams(max_new_tokens=max_new_tokens, do_sample=False)
    started = time.perf_counter()
    handles = [engine.submit(prompt, params) for prompt in prompts]
    tokens = 0
    for handle in handles:
        events = list(handle)
        if not isinstance(events[-1], DoneEvent):
            raise RuntimeError(f"engine generation failed: {events[-1]}")
        tokens += events[-1].completion_tokens
    return tokens / (time.perf_counter() - started)


def _time_steps(served, rows: int, context: int, steps: int) -> float:
    import torch
    from transformers import DynamicCache

    model = served.model
    generator = torch.Generator().manual_seed(rows)
    prompt = torch.randint(0, model.config.vocab_size, (rows, context), generator=generator).to(model.device)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, use_cache=True, **{served.cache_argument: cache})
        token = prompt[:, -1:]
        step = {"input_ids": token, "use_cache": True, served.cache_argument: cache, "logits_to_keep": 1}
        model(**step)  # Warm-up.
        _synchronize(model)
        started = time.perf_counter()
        for _ in range(steps):
            model(**step)
        _synchronize(model)
    return (time.perf_counter() - started) / steps


def _synchronize(model) -> None:
    """Wait for queued GPU work so that the clock includes it. A CPU has no queued work."""
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def bare_step_seconds(served, row_counts: tuple[int, ...], context: int, rounds: int = 3) -> dict[int, float]:
    """Time one decode step of the model alone (no engine) per row count, with a KV cache of `context` tokens.

    This is the cost that no batching can avoid on this hardware, apart from timing noise. Row
    counts alternate for `rounds` rounds and each figure is the median.
    """
    seconds: dict[int, list[float]] = {rows: [] for rows in row_counts}
    for round_index in range(rounds):
        order = row_counts if round_index % 2 == 0 else tuple(reversed(row_counts))
        for rows in order:
            seconds[rows].append(_time_steps(served, rows, context, steps=20))
    return {rows: median(values) for rows, values in seconds.items()}


def _explain_miss(engine_ratio: float, bare_ratio: float, top: int) -> str:
    from benchmarks.machine import usable_cores

    if engine_ratio < TARGET:
        return (
            f"The engine alone, without HTTP, reaches only {engine_ratio:.2f}× with {top} requests. The bare "
            f"model, without the engine, decodes {bare_ratio:.2f}× the rows per second in a batch of {top} "
            f"on this hardware, which is about what batching can gain here, and the engine reaches "
            f"{engine_ratio / bare_ratio:.0%} of that."
        )
    return (
        f"The engine alone, without HTTP, reaches {engine_ratio:.2f}×, so the batching works; the rest is "
        f"lost in HTTP and server-sent events: {top} streams send {top} events per decode step from the "
        f"API's event loop, which shares {usable_cores()} cores with the decode thread and with the "
        f"benchmark's {top} client threads."
    )


def measure_concurrency(
    base_url: str, engine, prompts: list[str], levels: tuple[int, ...], max_new_tokens: int, rounds: int
) -> Section:
    """Run every level of simultaneous streams once per round and compare the highest level with one.

    Each round also runs the lowest and highest level on an in-process engine without HTTP, which
    shows how much of the scaling the engine achieves by itself.
    """
    if max(levels) > len(prompts):
        raise ValueError(f"{max(levels)} streams need as many prompts, got {len(prompts)}")
    single, top = min(levels), max(levels)
    rates: dict[int, list[float]] = {level: [] for level in levels}
    engine_rates: dict[int, list[float]] = {single: [], top: []}
    first_texts: dict[int, list[float]] = {level: [] for level in levels}
    run_concurrent_streams(base_url, prompts[:top], max_new_tokens)  # Warm-up.
    engine_total_rate(engine, prompts[:top], max_new_tokens)
    for round_index in range(rounds):
        order = levels if round_index % 2 == 0 else tuple(reversed(levels))
        for level in order:
            runs, wall = run_concurrent_streams(base_url, prompts[:level], max_new_tokens)
            rates[level].append(_total_rate(runs, wall))
            first_texts[level] += [run.first_text_seconds for run in runs if run.first_text_seconds]
            if level in engine_rates:
                engine_rates[level].append(engine_total_rate(engine, prompts[:level], max_new_tokens))

    ratio = paired_ratio(rates[top], rates[single])
    engine_ratio = paired_ratio(engine_rates[top], engine_rates[single])
    bare_seconds = bare_step_seconds(engine.current, (single, top), BARE_STEP_CONTEXT)
    bare_ratio = (top / bare_seconds[top]) / (single / bare_seconds[single])
    table: list[list[Any]] = []
    for level in levels:
        level_rate = median(rates[level])
        table.append(
            [
                f"{level}, API",
                level_rate,
                level_rate / level,
                median(first_texts[level]) * 1000 if first_texts[level] else None,
                level_rate / median(rates[single]),
            ]
        )
    for level, level_rates in engine_rates.items():
        level_rate = median(level_rates)
        table.append(
            [
                f"{level}, engine in-process, no HTTP (diagnostic)",
                level_rate,
                level_rate / level,
                None,
                level_rate / median(engine_rates[single]),
            ]
        )
    logger.info(
        "concurrency: %d streams / %d stream = %.2f (engine alone %.2f)", top, single, ratio, engine_ratio
    )
    section = Section(
        key="concurrency",
        title=TITLES["concurrency"],
        measured=f"Total tokens per second of {', '.join(map(str, levels))} simultaneous greedy "
        "`/generate` streams (one client thread each, all released together), from the first "
        "request to the end of the last stream.",
        baseline=f"{single} stream on the same API, alternated with the other levels in each round.",
        settings={
            "levels": "/".join(map(str, levels)),
            "rounds": rounds,
            "new tokens per stream": max_new_tokens,
            "MAX_CONCURRENT_STREAMS": top,
        },
        columns=[
            "streams",
            "total tokens/s",
            "tokens/s per stream",
            "first text ms (median)",
            "× one stream",
        ],
        rows=table,
        ratio=ratio,
        ratio_name=f"{top} streams ÷ {single} stream on the API, total tokens/s, median of rounds",
        target=TARGET,
        notes=[
            f"The engine alone, without HTTP: {top} requests ÷ {single} = {engine_ratio:.2f}× (median of rounds).",
            f"A bare decode step of the model without the engine, with a KV cache of {BARE_STEP_CONTEXT} "
            f"tokens, takes {bare_seconds[single] * 1000:.1f} ms for {single} row and "
            f"{bare_seconds[top] * 1000:.1f} ms for {top} rows. So the bare model decodes {bare_ratio:.2f}× "
            f"the rows per second in a batch of {top}, about the gain that batching can bring on this hardware.",
        ],
        data={
            "bare_step_seconds": {str(rows): seconds for rows, seconds in bare_seconds.items()},
            "rates": {str(level): values for level, values in rates.items()},
            "engine_rates": {str(level): values for level, values in engine_rates.items()},
        },
    )
    if ratio < TARGET:
        section.explanation = _explain_miss(engine_ratio, bare_ratio, top)
    return section
