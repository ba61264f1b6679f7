"""Concurrency: total tokens per second of 1, 4 and 8 simultaneous /generate streams.

The engine decodes concurrent requests in one batch, so several streams should share each
decode step instead of queueing behind each other. The levels run in turn within a round, in
reversed order every other round, and each level's figure is the median over rounds.
"""

from __future__ import annotations

import logging
from typing import Any

from benchmarks.http_client import StreamRun, run_concurrent_streams
from benchmarks.report import Section
from benchmarks.stats import median, paired_ratio

logger = logging.getLogger(__name__)

TARGET = 3.0  # 8 streams give at least 3x the tokens per second of one stream.


def _total_rate(runs: list[StreamRun], wall: float) -> float:
    return sum(run.tokens for run in runs) / wall


def measure_concurrency(
    base_url: str, prompts: list[str], levels: tuple[int, ...], max_new_tokens: int, rounds: int
) -> Section:
    """Run every level of simultaneous streams once per round; compare the highest level with one."""
    if max(levels) > len(prompts):
        raise ValueError(f"{max(levels)} streams need as many prompts, got {len(prompts)}")
    rates: dict[int, list[float]] = {level: [] for level in levels}
    first_texts: dict[int, list[float]] = {level: [] for level in levels}
    run_concurrent_streams(base_url, prompts[: max(levels)], max_new_tokens)  # Warm-up.
    for round_index in range(rounds):
        order = levels if round_index % 2 == 0 else tuple(reversed(levels))
        for level in order:
            runs, wall = run_concurrent_streams(base_url, prompts[:level], max_new_tokens)
            rates[level].append(_total_rate(runs, wall))
            first_texts[level] += [run.first_text_seconds for run in runs if run.first_text_seconds]

    single, top = min(levels), max(levels)
    ratio = paired_ratio(rates[top], rates[single])
    rows: list[list[Any]] = []
    for level in levels:
        level_rate = median(rates[level])
        rows.append(
            [
                level,
                level_rate,
                level_rate / level,
                median(first_texts[level]) * 1000 if first_texts[level] else None,
                median(rates[level]) / median(rates[single]),
            ]
        )
    logger.info("concurrency: %d streams / %d stream = %.2f", top, single, ratio)
    return Section(
        key="concurrency",
        title="Concurrent streams",
        measured=f"Total tokens per second of {', '.join(map(str, levels))} simultaneous greedy "
        "`/generate` streams (one client thread each, all released together), from the first "
        "request to the end of the last stream.",
        baseline=f"{single} stream on the same API, alternated with the other levels in each round.",
        settings={
            "levels": "/".join(map(str, levels)),
            "rounds": rounds,
            "new tokens per stream": max_new_tokens,
            "MAX_CONCURRENT_STREAMS": max(levels),
        },
        columns=[
            "streams",
            "total tokens/s",
            "tokens/s per stream",
            "first text ms (median)",
            "× one stream",
        ],
        rows=rows,
        ratio=ratio,
        ratio_name=f"{top} streams ÷ {single} stream, total tokens/s, median of rounds",
        target=TARGET,
        data={"rates": {str(level): values for level, values in rates.items()}},
    )
