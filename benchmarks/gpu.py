"""Hardware shares on a GPU: training FLOP/s against the chip's peak, decode speed against its
memory-bandwidth bound.

Peak figures are NVIDIA datasheet values: dense bfloat16 tensor-core FLOP/s without sparsity,
and HBM or GDDR bandwidth. A chip missing from the table reports its share as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from benchmarks.report import TITLES, Section


@dataclass(frozen=True)
class ChipPeak:
    bf16_flops: float  # Dense, FLOP/s.
    bandwidth: float  # Bytes per second.


# Matched in order against the words of the CUDA device name, split at spaces and hyphens. The
# first entry whose words all occur wins. A None peak means that the variant's peak is not listed.
PEAKS: list[tuple[tuple[str, ...], ChipPeak | None]] = [
    (("H200", "NVL"), None),
    (("H200",), ChipPeak(989e12, 4.8e12)),
    (("H100", "PCIe"), ChipPeak(756e12, 2.0e12)),
    (("H100", "HBM3"), ChipPeak(989e12, 3.35e12)),  # SXM, named "NVIDIA H100 80GB HBM3".
    (("A100", "80GB"), ChipPeak(312e12, 2.0e12)),
    (("A100", "40GB"), ChipPeak(312e12, 1.555e12)),
    (("L40S",), ChipPeak(362e12, 864e9)),
    (("A10",), ChipPeak(125e12, 600e9)),
    (("L4",), ChipPeak(121e12, 300e9)),
]


def find_peak(device_name: str) -> ChipPeak | None:
    words = set(re.split(r"[\s-]+", device_name))
    for required, peak in PEAKS:
        if all(word in words for word in required):
            return peak
    return None


def no_gpu_section() -> Section:
    return Section(
        key="gpu",
        title=TITLES["gpu"],
        measured="Training FLOP/s as a share of the chip's peak and decode speed as a share of its "
        "memory-bandwidth bound.",
        baseline="The chip's datasheet peak.",
        settings={"GPU": "none"},
        columns=["figure", "value"],
        rows=[["GPU present", "no"]],
        notes=[
            "No GPU was present in this run (`torch.cuda.is_available()` is false), so nothing was measured."
        ],
    )


def model_parameters(model_path: str) -> tuple[int, int]:
    """Return the parameters that take part in every token's matrix products, and their bytes in bf16.

    The input embedding is left out: each token reads one of its rows, not the whole matrix.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    embedding = sum(parameter.numel() for parameter in model.get_input_embeddings().parameters())
    parameters = sum(parameter.numel() for parameter in model.parameters()) - embedding
    return parameters, 2 * parameters


def gpu_section(
    model_path: str, training: dict[str, Any] | None, decode_tokens_per_second: float | None
) -> Section:
    """Compare measured training and single-stream decode speed with the chip's peaks.

    NOTE: this path has not run in the project's CI, which has no GPU.
    """
    import torch

    from benchmarks.training import training_flops_per_second

    name = torch.cuda.get_device_name(0)
    peak = find_peak(name)
    parameters, weight_bytes = model_parameters(model_path)
    rows: list[list[Any]] = [["device", name], ["parameters in matrix products", parameters]]
    if training:
        flops = training_flops_per_second(
            parameters, training["samples_per_second"], training["padded_tokens_per_sample"]
        )
        rows.append(["training TFLOP/s (4 × parameters × tokens/s, padding included)", flops / 1e12])
        rows.append(
            ["share of dense bf16 peak", f"{100 * flops / peak.bf16_flops:.3f}%" if peak else "unknown"]
        )
    if decode_tokens_per_second:
        rows.append(["decode tokens/s, one stream", decode_tokens_per_second])
        if peak:
            bound = peak.bandwidth / weight_bytes
            rows.append(["bandwidth bound tokens/s (bandwidth ÷ bf16 weight bytes)", bound])
            rows.append(["share of the bound", f"{100 * decode_tokens_per_second / bound:.3f}%"])
        else:
            rows.append(["share of the bound", "unknown"])
    return Section(
        key="gpu",
        title=TITLES["gpu"],
        measured="Training FLOP/s of `adgen train` as a share of the chip's dense bf16 peak, and "
        "single-stream decode speed of the API as a share of the memory-bandwidth bound.",
        baseline=f"Datasheet peaks of {name}: "
        + (
            f"{peak.bf16_flops / 1e12:.0f} TFLOP/s bf16, {peak.bandwidth / 1e12:.2f} TB/s."
            if peak
            else "unknown."
        ),
        settings={"GPU": name},
        columns=["figure", "value"],
        rows=rows,
        notes=[
            "The tiny model has a few million parameters, far too few to keep a data-centre GPU busy: "
            "per-step overheads (Python, kernel launches) dominate, so both shares are expected to be "
            "small. They become meaningful with a real 6B or 9B model."
        ],
    )
