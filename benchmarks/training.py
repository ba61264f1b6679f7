"""Training throughput: `run_training` (group_by_length, dynamic padding) against a plain Trainer + peft
loop that pads every batch to the dataset's maximum length.

Both sides train one epoch over the same tokenized rows (`shared.train.dataset`), with the same
model, LoRA configuration, batch size, learning rate and seed, so they take the same number of
steps. Samples per second is the Trainer's own `train_samples_per_second`, the same formula on
both sides, covering the training loop only (not model loading or tokenization).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from benchmarks.report import TITLES, Section
from benchmarks.stats import alternate, median, paired_ratio
from benchmarks.workspace import DATASET, Workspace
from shared.hparams import ADGEN_SOURCE_PREFIX, TrainArgs

logger = logging.getLogger(__name__)

TARGET = 1.3  # Our defaults train at least 1.3x the samples per second of max-length padding.
OURS, BASELINE = "ours", "baseline"
LORA_RANK = 8
NEVER = 10**9  # A step count that no run reaches: no checkpoint and no log line during the loop.


class TokenCounter(TrainerCallback):
    """Record the (rows, columns) shape of every batch that reaches the model's input embeddings."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, inputs, output) -> None:
            rows, columns = inputs[0].shape[:2]
            self.shapes.append((int(rows), int(columns)))

        model.get_input_embeddings().register_forward_hook(record)

    @property
    def padded_tokens(self) -> int:
        return sum(rows * columns for rows, columns in self.shapes)


@dataclass
class TrainRun:
    samples_per_second: float
    runtime_seconds: float
    padded_tokens: int
    batches: int
    losses: list[float] = field(default_factory=list)


def _bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def train_args(workspace: Workspace, rows: int, batch_size: int, output_dir: Path) -> TrainArgs:
    """Return the `adgen train` options of one run: one epoch over the first `rows` rows, our defaults otherwise."""
    return TrainArgs(
        dataset=DATASET,
        dataset_dir=str(workspace.data_dir),
        source_prefix=ADGEN_SOURCE_PREFIX,
        max_samples=rows,
        num_train_epochs=1,
        per_device_train_batch_size=batch_size,
        lora_rank=LORA_RANK,
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        save_steps=NEVER,
        logging_steps=NEVER,
        disable_tqdm=True,
        bf16=_bf16(),
    )


def run_ours(workspace: Workspace, rows: int, batch_size: int) -> TrainRun:
    """Train with `run_training`, the code path of `adgen train` and of training jobs."""
    from shared.train.workflow import run_training

    output_dir = workspace.root / "train-ours"
    counter = TokenCounter()
    args = train_args(workspace, rows, batch_size, output_dir)
    metrics = run_training(args, workspace.settings(), callbacks=[counter])
    shutil.rmtree(output_dir, ignore_errors=True)
    return _train_run(metrics, counter)


def lora_targets(model) -> list[str]:
    """Return the leaf names of every linear layer but the output head, our default LoRA targets."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return sorted(names - {"lm_head"})


def run_baseline(workspace: Workspace, rows: int, batch_size: int) -> TrainRun:
    """Train with a plain `Trainer` and peft, padding every batch to the longest row of the dataset."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    from shared.modeling.loader import load_model, load_tokenizer
    from shared.train.dataset import build_train_dataset

    output_dir = workspace.root / "train-baseline"
    args = train_args(workspace, rows, batch_size, output_dir)
    tokenizer = load_tokenizer(str(workspace.model_path), padding_side="right")
    dataset = build_train_dataset(tokenizer, args, workspace.data_dir)
    max_length = max(len(ids) for ids in dataset["input_ids"])
    model = load_model(str(workspace.model_path), trainable=True)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA_RANK,
        lora_alpha=2 * LORA_RANK,
        lora_dropout=args.lora_dropout,
        target_modules=lora_targets(model),
    )
    model = get_peft_model(model, lora)
    counter = TokenCounter()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=batch_size,
            num_train_epochs=1,
            learning_rate=args.learning_rate,
            seed=args.seed,
            save_strategy="no",
            logging_steps=NEVER,
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=args.bf16,
            remove_unused_columns=False,
        ),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=max_length),
        callbacks=[counter],
    )
    trainer.remove_callback(PrinterCallback)  # It would print the final metrics to stdout.
    metrics = trainer.train().metrics
    shutil.rmtree(output_dir, ignore_errors=True)
    return _train_run(metrics, counter)


def dataset_lengths(workspace: Workspace, rows: int) -> list[int]:
    """Return the token count of each training row, prompt and response together."""
    from shared.modeling.loader import load_tokenizer
    from shared.train.dataset import build_train_dataset

    tokenizer = load_tokenizer(str(workspace.model_path), padding_side="right")
    args = train_args(workspace, rows, 1, workspace.root / "unused")
    return [len(ids) for ids in build_train_dataset(tokenizer, args, workspace.data_dir)["input_ids"]]


def _explain_miss(ratio: float, padding_ratio: float, lengths: list[int]) -> str:
    """Say whether padding or per-step costs limit the gain of dynamic padding."""
    mean = sum(lengths) / len(lengths)
    if padding_ratio < TARGET:
        return (
            f"These rows are close in length (mean {mean:.0f}, maximum {max(lengths)} tokens), so padding "
            f"to the maximum adds few tokens: the baseline computes only {padding_ratio:.2f}× the tokens of "
            "ours, which bounds the gain even if every step cost the same per token."
        )
    return (
        f"The baseline computes {padding_ratio:.2f}× the tokens of ours, but the measured gain is "
        f"{ratio:.2f}×: costs that do not grow with the sequence length (the optimizer step, Python and "
        "kernel overheads of a model this small) take a large share of every step."
    )


def measure_training(workspace: Workspace, rows: int, batch_size: int, rounds: int, warm_up: bool) -> Section:
    """Alternate our training and the baseline for `rounds` rounds and compare samples per second."""
    if rows % batch_size:
        raise ValueError(f"rows ({rows}) must be a multiple of the batch size ({batch_size})")
    runners = {OURS: run_ours, BASELINE: run_baseline}
    if warm_up:
        for runner in runners.values():
            runner(workspace, 2 * batch_size, batch_size)
    runs: dict[str, list[TrainRun]] = {OURS: [], BASELINE: []}
    for round_index in range(rounds):
        for side in alternate(round_index, OURS, BASELINE):
            runs[side].append(runners[side](workspace, rows, batch_size))
            logger.info(
                "training round %d %s: %.2f samples/s", round_index, side, runs[side][-1].samples_per_second
            )

    lengths = dataset_lengths(workspace, rows)
    real_tokens = sum(lengths)
    ratio = paired_ratio(
        [run.samples_per_second for run in runs[OURS]], [run.samples_per_second for run in runs[BASELINE]]
    )
    padding_ratio = runs[BASELINE][0].padded_tokens / runs[OURS][0].padded_tokens
    table = []
    labels = {OURS: "adgen train (group_by_length, dynamic padding)", BASELINE: "Trainer, max_length padding"}
    for side, label in labels.items():
        side_runs = runs[side]
        table.append(
            [
                label,
                median([run.samples_per_second for run in side_runs]),
                median([run.runtime_seconds for run in side_runs]),
                side_runs[0].batches,
                side_runs[0].padded_tokens / rows,
                real_tokens / side_runs[0].padded_tokens,
            ]
        )
    section = Section(
        key="training",
        title=TITLES["training"],
        measured="Samples per second of `run_training` (the code of `adgen train` and of training jobs) "
        "with our defaults: `group_by_length` batches and padding to the longest row of each batch.",
        baseline="A plain Hugging Face `Trainer` with the same peft LoRA configuration, random batches, "
        'and every batch padded to the longest row of the training rows (`padding="max_length"`).',
        settings={
            "rows": rows,
            "epochs": 1,
            "batch size": batch_size,
            "LoRA rank": LORA_RANK,
            "LoRA targets": "every linear layer but lm_head",
            "rounds": rounds,
            "precision": "bf16" if _bf16() else "float32",
        },
        columns=[
            "side",
            "samples/s (median)",
            "loop s (median)",
            "steps",
            "tokens per row incl. padding",
            "real share of tokens",
        ],
        rows=table,
        ratio=ratio,
        ratio_name="ours ÷ baseline, samples/s, median of rounds",
        target=TARGET,
        notes=[
            f"Row lengths (prompt and response, tokens): mean {real_tokens / len(lengths):.0f}, "
            f"median {median(lengths):.0f}, maximum {max(lengths)}.",
            f"The baseline computes {padding_ratio:.2f}× the tokens of ours (padding included); that is the "
            "ratio if every step cost the same per token.",
            "Samples per second is the Trainer's `train_samples_per_second`: the training loop only, "
            "without loading the model or tokenizing.",
        ],
        data={side: [run.__dict__ for run in side_runs] for side, side_runs in runs.items()},
    )
    if ratio < TARGET:
        section.explanation = _explain_miss(ratio, padding_ratio, lengths)
    section.data["lengths"] = {
        "mean": real_tokens / len(lengths),
        "max": max(lengths),
        "real_tokens": real_tokens,
    }
    return section


def training_flops_per_second(
    parameters: int, samples_per_second: float, padded_tokens_per_sample: float
) -> float:
    """Estimate LoRA training FLOP/s as 4 x parameters x tokens per second.

    The forward pass takes about 2 FLOPs per parameter and token. The backward pass computes the
    activation gradients (about 2 more) but no gradients of the frozen base weights.
    """
    return 4 * parameters * samples_per_second * padded_tokens_per_sample


def describe_runs(section: Section) -> dict[str, Any]:
    """Return the figures that the GPU section needs from this one."""
    ours = section.data[OURS]
    return {
        "samples_per_second": median([run["samples_per_second"] for run in ours]),
        "padded_tokens_per_sample": ours[0]["padded_tokens"] / section.settings["rows"],
    }


def _train_run(metrics: dict, counter: TokenCounter) -> TrainRun:
    """Combine the Trainer's metrics with the padding that `counter` saw into one side's figures."""
    return TrainRun(
        samples_per_second=metrics["train_samples_per_second"],
        runtime_seconds=metrics["train_runtime"],
        padded_tokens=counter.padded_tokens,
        batches=len(counter.shapes),
    )
