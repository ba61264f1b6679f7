"""Prediction throughput: batched `run_evaluation` (`adgen eval`) against batch size 1.

Both sides generate greedily for the same rows with the same `max_new_tokens`. The figure is
`predict_samples_per_second` from all_results.json, which covers generation only: not model
loading, the eval loss or scoring.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

from benchmarks.report import TITLES, Section
from benchmarks.stats import alternate, median, paired_ratio
from benchmarks.workspace import DATASET, Workspace
from shared.hparams import ADGEN_SOURCE_PREFIX, EvalArgs

logger = logging.getLogger(__name__)

TARGET = 3.0  # Batched prediction gives at least 3x the samples per second of batch size 1.


def run_prediction(
    workspace: Workspace, rows: int, max_new_tokens: int, batch_size: int
) -> tuple[float, list[str]]:
    """Run `run_evaluation` once and return its samples per second and its predictions."""
    from shared.eval.predict import PREDICTIONS_FILE, run_evaluation

    output_dir = workspace.root / f"predict-batch-{batch_size}"
    shutil.rmtree(output_dir, ignore_errors=True)
    args = EvalArgs(
        dataset=DATASET,
        dataset_dir=str(workspace.data_dir),
        source_prefix=ADGEN_SOURCE_PREFIX,
        max_samples=rows,
        max_new_tokens=max_new_tokens,
        per_device_eval_batch_size=batch_size,
        output_dir=str(output_dir),
    )
    results = run_evaluation(args, workspace.settings())
    lines = Path(output_dir, PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    predictions = [json.loads(line)["predict"] for line in lines]
    shutil.rmtree(output_dir, ignore_errors=True)
    return results["predict_samples_per_second"], predictions


def _explain_miss(
    batch_size: int,
    prompt_gain: float,
    decode_gain: float,
    rates: dict[str, list[float]],
    loads: tuple[str, str],
) -> str:
    """Split the shortfall into the prompt pass and decoding, and show how much the rounds varied."""
    return (
        f"Batches of {batch_size} speed up the prompt pass {prompt_gain:.1f}× and each generated token "
        f"{decode_gain:.1f}× in this run. Across rounds the batched rate ranged from "
        f"{min(rates['batched']):.1f} to {max(rates['batched']):.1f} rows/s and the single-row rate from "
        f"{min(rates['single']):.1f} to {max(rates['single']):.1f}, while the load average went from "
        f"{loads[0]} to {loads[1]}: other processes took CPU time during the short batched runs."
    )


def measure_prediction(
    workspace: Workspace, rows: int, max_new_tokens: int, batch_size: int, rounds: int, warm_up: bool
) -> Section:
    """Alternate batched and one-by-one prediction for `rounds` rounds and compare samples per second.

    One more run per side with a single new token measures the prompt pass alone, which splits the
    gain of batching into the prompt pass and the decoding of each further token.
    """
    from benchmarks.machine import load_average

    load_at_start = load_average()
    sizes = {"batched": batch_size, "single": 1}
    if warm_up:
        for size in sizes.values():
            run_prediction(workspace, min(rows, 2 * size), 4, size)
    rates: dict[str, list[float]] = {"batched": [], "single": []}
    predictions: dict[str, list[str]] = {}
    for round_index in range(rounds):
        for side in alternate(round_index, "batched", "single"):
            rate, predictions[side] = run_prediction(workspace, rows, max_new_tokens, sizes[side])
            rates[side].append(rate)
            logger.info("prediction round %d %s: %.2f samples/s", round_index, side, rate)
    prompt_rates = {side: run_prediction(workspace, rows, 1, size)[0] for side, size in sizes.items()}

    ratio = paired_ratio(rates["batched"], rates["single"])
    prompt_gain = prompt_rates["batched"] / prompt_rates["single"]
    # Seconds per row of generation minus seconds per row of the prompt pass: the decoding of the other tokens.
    decode_seconds = {side: 1 / median(rates[side]) - 1 / prompt_rates[side] for side in sizes}
    if min(decode_seconds.values()) <= 0:  # Too few new tokens for the noise of the timing.
        decode_gain = float("nan")
    else:
        decode_gain = decode_seconds["single"] / decode_seconds["batched"]
    identical = sum(a == b for a, b in zip(predictions["batched"], predictions["single"], strict=True))
    section = Section(
        key="prediction",
        title=TITLES["prediction"],
        measured=f"Samples per second of `run_evaluation` (`adgen eval`) with "
        f"`per_device_eval_batch_size {batch_size}`: prompts padded on the left and generated together.",
        baseline="The same command with `per_device_eval_batch_size 1`, on the same rows and settings.",
        settings={
            "rows": rows,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "rounds": rounds,
        },
        columns=["batch size", "samples/s (median)", "rounds", "samples/s, prompt pass only (1 new token)"],
        rows=[
            [batch_size, median(rates["batched"]), len(rates["batched"]), prompt_rates["batched"]],
            [1, median(rates["single"]), len(rates["single"]), prompt_rates["single"]],
        ],
        ratio=ratio,
        ratio_name=f"batch {batch_size} ÷ batch 1, samples/s, median of rounds",
        target=TARGET,
        notes=[
            f"Batching speeds up the prompt pass {prompt_gain:.1f}× and the decoding of the other tokens "
            + ("by an amount too small to time" if math.isnan(decode_gain) else f"{decode_gain:.1f}×")
            + " (from the medians and the single-token runs).",
            f"Predictions identical in both runs for {identical} of {rows} rows; left padding may change "
            "the float rounding of a padded row, and with it a greedy choice between near-equal tokens.",
        ],
        data={"rates": rates, "prompt_pass_rates": prompt_rates},
    )
    if ratio < TARGET:
        loads = (load_at_start, load_average())
        section.explanation = _explain_miss(batch_size, prompt_gain, decode_gain, rates, loads)
    return section
