"""Small statistics helpers: median, percentiles and paired ratios."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) with linear interpolation between ranks, as numpy does."""
    if not values:
        raise ValueError("percentile of an empty list")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Return the median of per-round ratios. Each round pairs two measurements taken back to back."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("paired_ratio needs two lists of the same, non-zero length")
    return median([top / bottom for top, bottom in zip(numerators, denominators, strict=True)])


def alternate(round_index: int, first: str, second: str) -> tuple[str, str]:
    """Return the order of two sides in a round: (first, second) in even rounds, swapped in odd ones."""
    return (first, second) if round_index % 2 == 0 else (second, first)
