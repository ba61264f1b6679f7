"""`adgen benchmark` (`make eval`): the ADGEN table of the base model ("Original") and fine-tuned models.

The table has the rows and columns that ChatGLM-Efficient-Tuning publishes for ADGEN: BLEU-4,
Rouge-1, Rouge-2, Rouge-l and Loss, one column per model. Each model is evaluated by
`shared.eval.predict.run_evaluation`, so the scores follow the same protocol as `adgen eval`.

Protocols:

- `dataset` (default): evaluate the base model and the adapters of `--adapters` (default: the newest
  adapter under the adapters volume) on the first `--samples` rows of a registered dataset.
- `heldout`: rebuild the experiment of docs/evaluation.md from one file, the ADGEN dev split
  (`--dev_file`, default: the file of `--dataset`). Its last `--samples` lines are held out for
  evaluation, and nothing of them reaches the tokenizer or the training. A fresh tiny model gets a
  tokenizer trained on the other lines, then all its weights are trained on their ad copy without
  tags ("Original"), then a LoRA adapter is trained on the same lines with their tags.

The base stage takes the place of pretraining. A LoRA on the random model barely learns, because the
embeddings and the output head that it cannot change are random: in trials with learning rates from
3e-4 to 1e-2 and ranks 8 and 32, the loss stayed near 8.3 (9.0 is uniform over 8,000 tokens).

Each run starts from empty prediction folders, because a retrained adapter keeps its folder name and
`adgen eval` would otherwise resume the predictions of the old one.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.argparsing import add_model_arguments, parse_model
from shared.hparams import ADGEN_SOURCE_PREFIX, EvalArgs
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)

TABLE_MARKDOWN = "adgen_table.md"
TABLE_JSON = "adgen_table.json"
ORIGINAL = "Original"
# Table row -> key of all_results.json.
ROWS = {
    "BLEU-4": "predict_bleu-4",
    "Rouge-1": "predict_rouge-1",
    "Rouge-2": "predict_rouge-2",
    "Rouge-l": "predict_rouge-l",
    "Loss": "eval_loss",
}
HELDOUT_TRAIN = "heldout_train"
HELDOUT_EVAL = "heldout_eval"
HELDOUT_BASE = "heldout_base"
# Prompt of the base model's training: the ADGEN instruction without tags.
BASE_PROMPT = ADGEN_SOURCE_PREFIX
ADGEN_COLUMNS = {"prompt": "content", "query": "", "response": "summary", "history": ""}


class BenchmarkError(ValueError):
    """Benchmark input that cannot be used: a missing dev file, too few lines, several files to split."""


class BenchmarkArgs(BaseModel):
    """Options of `adgen benchmark`."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["dataset", "heldout"] = Field(
        "dataset",
        description="`dataset` evaluates existing models on --dataset; `heldout` trains a tiny model's "
        "LoRA on a dev file without its last --samples lines and evaluates on those lines.",
    )
    dataset: str = Field(
        "adgen_dev",
        description="Registered dataset that `dataset` evaluates and that `heldout` splits unless --dev_file is given.",
    )
    dataset_dir: str | None = Field(None, description="Folder of dataset_info.json; default DATA_DIR.")
    samples: int = Field(
        100, ge=1, description="Samples evaluated per model (held-out lines with `heldout`)."
    )
    adapters: str | None = Field(
        None,
        description="LoRA adapter folders, comma-separated, one column each; default: the newest "
        "adapter under the adapters volume.",
    )
    model_name_or_path: str | None = Field(
        None,
        description="Base model of the Original column; default: the adapters' recorded base, else BASE_MODEL.",
    )
    output_dir: str | None = Field(
        None, description="Folder of the table and predictions; default RESULTS/benchmark."
    )
    dev_file: str | None = Field(
        None,
        description="`heldout`: ADGEN JSON-lines file (content, summary) to split; default: the file of --dataset.",
    )
    source_prefix: str | None = Field(
        ADGEN_SOURCE_PREFIX,
        max_length=2000,
        description="Text put before each prompt; the ADGEN one by default.",
    )
    per_device_eval_batch_size: int = Field(8, ge=1, le=1024, description="Prompts generated together.")
    # The maximum ad copy length in the ADGEN dev split is 237 characters, 144 tokens of the `heldout` tokenizer.
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Maximum new tokens generated per prompt.")
    base_steps: int = Field(
        100,
        ge=0,
        description="`heldout`: updates of all weights of the fresh tiny model on the training ad copy "
        "without tags, in place of pretraining; 0 keeps it random.",
    )
    base_learning_rate: float = Field(
        2e-3, gt=0, le=1, description="`heldout`: peak learning rate of the base."
    )
    max_steps: int = Field(300, ge=1, description="`heldout`: LoRA training updates.")
    learning_rate: float = Field(
        5e-3, gt=0, le=1, description="`heldout`: peak LoRA learning rate (cosine schedule)."
    )
    lora_rank: int = Field(32, ge=1, le=1024, description="`heldout`: rank of the LoRA update matrices.")
    per_device_train_batch_size: int = Field(
        8, ge=1, le=4096, description="`heldout`: samples per update of the base and the LoRA."
    )


def find_newest_adapter(adapters_dir: Path) -> Path | None:
    """Return the folder under `adapters_dir` whose adapter_config.json was written last, if any."""
    configs = sorted(adapters_dir.glob("*/adapter_config.json"), key=lambda path: path.stat().st_mtime)
    return configs[-1].parent if configs else None


def column_name(adapter: str) -> str:
    return f"LoRA ({Path(adapter).name})"


def _run_folder_name(column: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in column).strip("-").lower()


def evaluate_columns(
    columns: dict[str, EvalArgs], runs_dir: Path, settings: Settings
) -> dict[str, dict[str, Any]]:
    """Evaluate each column's model from an empty output folder and return the results by column."""
    from shared.eval.predict import run_evaluation

    results = {}
    for column, eval_args in columns.items():
        output_dir = runs_dir / _run_folder_name(column)
        shutil.rmtree(output_dir, ignore_errors=True)
        eval_args = eval_args.model_copy(update={"output_dir": str(output_dir)})
        logger.info("evaluating column %s into %s", column, output_dir)
        results[column] = run_evaluation(eval_args, settings)
    return results


def build_table(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return row -> column -> value, for the rows of the published ADGEN table."""
    return {row: {column: result[key] for column, result in results.items()} for row, key in ROWS.items()}


def format_markdown(table: dict[str, dict[str, float]], caption: str) -> str:
    columns = list(next(iter(table.values())))
    lines = [caption, "", "| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row, values in table.items():
        lines.append(f"| {row} | " + " | ".join(f"{values[column]:.2f}" for column in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(output_dir: Path, table: dict, caption: str, details: dict[str, Any]) -> str:
    """Write the table as Markdown and JSON in `output_dir` and return the Markdown."""
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(table, caption)
    (output_dir / TABLE_MARKDOWN).write_text(markdown, encoding="utf-8")
    document = {"columns": list(next(iter(table.values()))), "rows": table, **details}
    (output_dir / TABLE_JSON).write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    return markdown


def _eval_args(args: BenchmarkArgs, **fields: Any) -> EvalArgs:
    return EvalArgs(
        max_samples=args.samples,
        source_prefix=args.source_prefix,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        **fields,
    )


def dataset_columns(args: BenchmarkArgs, settings: Settings) -> dict[str, EvalArgs]:
    """Return the evaluations of the `dataset` protocol: Original, then one per adapter."""
    from shared.eval.predict import parse_checkpoints, select_model

    if args.adapters:
        adapters = parse_checkpoints(args.adapters)
    else:
        newest = find_newest_adapter(settings.adapters_dir)
        adapters = [str(newest)] if newest else []
        if not adapters:
            logger.warning(
                "no adapter under %s; the table has the Original column only", settings.adapters_dir
            )
    base = args.model_name_or_path
    if adapters and not base:
        # The Original column uses the base the first adapter was trained on.
        base = select_model(EvalArgs(checkpoint_dir=adapters[0]), settings).model_path
    shared_fields = {"dataset": args.dataset, "dataset_dir": args.dataset_dir}
    columns = {ORIGINAL: _eval_args(args, model_name_or_path=base, **shared_fields)}
    for adapter in adapters:
        columns[column_name(adapter)] = _eval_args(
            args, model_name_or_path=args.model_name_or_path, checkpoint_dir=adapter, **shared_fields
        )
    return columns


def resolve_dev_file(args: BenchmarkArgs, settings: Settings) -> Path:
    """Return `--dev_file`, else the file that the registry gives for the one dataset of `--dataset`."""
    from shared.data.registry import resolve_datasets

    if args.dev_file:
        return Path(args.dev_file)
    specs = resolve_datasets(args.dataset, Path(args.dataset_dir or settings.data_dir))
    if len(specs) != 1:
        raise BenchmarkError(
            "--protocol heldout splits one file; pass one name with --dataset, or --dev_file"
        )
    return specs[0].path


def split_dev_file(dev_file: Path, eval_samples: int, data_dir: Path) -> tuple[int, int]:
    """Register the training lines and the last `eval_samples` lines of `dev_file` in `data_dir`.

    A third dataset, `heldout_base`, pairs each training response with the source prefix alone, so
    the base model learns to write ad copy without seeing any tags.
    """
    from shared.data.registry import load_examples

    if not dev_file.is_file():
        raise BenchmarkError(
            f"dev file {str(dev_file)!r} not found; run `make data` or pass --dev_file with ADGEN's dev.json"
        )
    lines = [line for line in dev_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if len(lines) <= eval_samples:
        raise BenchmarkError(
            f"dev file {dev_file} has {len(lines)} lines; holding out --samples {eval_samples} "
            "leaves none to train on"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.json").write_text("\n".join(lines[:-eval_samples]) + "\n", encoding="utf-8")
    (data_dir / "eval.json").write_text("\n".join(lines[-eval_samples:]) + "\n", encoding="utf-8")
    registry = {
        HELDOUT_TRAIN: {"file_name": "train.json", "columns": ADGEN_COLUMNS},
        HELDOUT_EVAL: {"file_name": "eval.json", "columns": ADGEN_COLUMNS},
        HELDOUT_BASE: {"file_name": "base.json", "columns": ADGEN_COLUMNS},
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(registry, indent=2), encoding="utf-8")
    base_lines = [
        json.dumps({"content": BASE_PROMPT, "summary": example.response}, ensure_ascii=False)
        for example in load_examples(HELDOUT_TRAIN, data_dir)
    ]
    (data_dir / "base.json").write_text("\n".join(base_lines) + "\n", encoding="utf-8")
    return len(lines) - eval_samples, eval_samples


def _heldout_train_args(args: BenchmarkArgs, **fields: Any):
    from shared.hparams import TrainArgs

    return TrainArgs(
        overwrite_output_dir=True,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=args.per_device_train_batch_size,
        logging_steps=max(fields["max_steps"] // 10, 1),
        save_steps=fields["max_steps"] + 1,  # No checkpoint folders: only the final model is used.
        **fields,
    )


def build_heldout_base(args: BenchmarkArgs, work_dir: Path, settings: Settings) -> tuple[Path, dict]:
    """Build a tiny model from the training lines, then train all its weights on their ad copy."""
    from shared.modeling.tiny import build_tiny_model, corpus_texts
    from shared.train.workflow import run_training

    data_dir = work_dir / "data"
    initial_dir = work_dir / "tiny-glm-init"
    shutil.rmtree(initial_dir, ignore_errors=True)
    build_tiny_model(initial_dir, corpus_texts(data_dir, HELDOUT_TRAIN), "glm")
    if not args.base_steps:
        return initial_dir, {}
    base_dir = work_dir / "tiny-glm"
    train_args = _heldout_train_args(
        args,
        dataset=HELDOUT_BASE,
        dataset_dir=str(data_dir),
        model_name_or_path=str(initial_dir),
        output_dir=str(base_dir),
        finetuning_type="full",
        learning_rate=args.base_learning_rate,
        max_steps=args.base_steps,
    )
    return base_dir, run_training(train_args, settings)


def train_heldout_adapter(
    args: BenchmarkArgs, work_dir: Path, base_dir: Path, settings: Settings
) -> tuple[Path, dict]:
    """Train the LoRA adapter of the `heldout` protocol on the training lines, tags included."""
    from shared.train.workflow import run_training

    adapter_dir = work_dir / "adgen_lora"
    train_args = _heldout_train_args(
        args,
        dataset=HELDOUT_TRAIN,
        dataset_dir=str(work_dir / "data"),
        model_name_or_path=str(base_dir),
        output_dir=str(adapter_dir),
        finetuning_type="lora",
        lora_rank=args.lora_rank,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        source_prefix=args.source_prefix,
    )
    return adapter_dir, run_training(train_args, settings)


def heldout_columns(
    args: BenchmarkArgs, work_dir: Path, settings: Settings
) -> tuple[dict[str, EvalArgs], dict]:
    """Split the dev file, train the base and the LoRA, and return the evaluations of `heldout`."""
    dev_file = resolve_dev_file(args, settings)
    train_lines, eval_lines = split_dev_file(dev_file, args.samples, work_dir / "data")
    logger.info("held out the last %d lines of %s; training on %d", eval_lines, dev_file, train_lines)
    started = time.monotonic()
    base_dir, base_metrics = build_heldout_base(args, work_dir, settings)
    adapter_dir, lora_metrics = train_heldout_adapter(args, work_dir, base_dir, settings)
    shared_fields = {
        "dataset": HELDOUT_EVAL,
        "dataset_dir": str(work_dir / "data"),
        "model_name_or_path": str(base_dir),
    }
    columns = {
        ORIGINAL: _eval_args(args, **shared_fields),
        column_name(str(adapter_dir)): _eval_args(args, checkpoint_dir=str(adapter_dir), **shared_fields),
    }
    training = {
        "dev_file": str(dev_file.resolve()),
        "train_lines": train_lines,
        "heldout_lines": eval_lines,
        "base_steps": args.base_steps,
        "base_learning_rate": args.base_learning_rate,
        "base_train_loss": base_metrics.get("train_loss"),
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": "cosine",
        "lora_rank": args.lora_rank,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "train_loss": lora_metrics.get("train_loss"),
        "train_seconds": round(time.monotonic() - started, 1),
    }
    return columns, training


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, restoring the previous count after it.

    The tiny model's matrices are too small for a second thread to pay off, and on a busy CPU its
    threads wait for each other. On a 2-core CPU with a load average near 3.4, 40 training steps of
    batch 8 took 35-39 s on one thread and 63-118 s on two. A generation step of batch 8 took
    8-11 ms on one thread and 30-160 ms on two.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_benchmark(args: BenchmarkArgs, settings: Settings | None = None) -> dict[str, Any]:
    """Evaluate every column, write the table files and return the table document with its Markdown."""
    settings = settings or get_settings()
    output_dir = Path(args.output_dir) if args.output_dir else settings.results_dir / "benchmark"
    started = time.monotonic()
    details: dict[str, Any] = {"protocol": args.protocol, "samples": args.samples}
    # The held-out protocol runs only the tiny model, so it runs on one thread.
    with single_thread() if args.protocol == "heldout" else nullcontext():
        if args.protocol == "heldout":
            columns, details["training"] = heldout_columns(args, output_dir / "heldout", settings)
            details["dataset"] = details["training"]["dev_file"]
        else:
            columns = dataset_columns(args, settings)
            details["dataset"] = args.dataset
        results = evaluate_columns(columns, output_dir / "runs", settings)

    first = next(iter(results.values()))
    details["decoding"] = {
        key: first[key]
        for key in ("do_sample", "max_new_tokens", "per_device_eval_batch_size", "seed", "source_prefix")
    }
    details["models"] = {
        column: {key: result[key] for key in ("model_path", "checkpoint_dir")}
        for column, result in results.items()
    }
    details["runtime_seconds"] = round(time.monotonic() - started, 1)
    table = build_table(results)
    caption = (
        f"ADGEN table ({args.protocol} protocol): {first['predict_samples']} samples of {details['dataset']}, "
        f"greedy decoding, max_new_tokens {args.max_new_tokens}, scores x100."
    )
    markdown = write_table(output_dir, table, caption, details)
    logger.info(
        "wrote %s and %s in %.1f s", output_dir / TABLE_MARKDOWN, TABLE_JSON, details["runtime_seconds"]
    )
    return {"columns": list(results), "rows": table, "markdown": markdown, **details}


def main(argv: list[str]) -> int:
    from shared.data.registry import DatasetError
    from shared.eval.predict import EvaluationSetupError
    from shared.logs import setup_logging
    from shared.train.workflow import TrainingSetupError

    parser = argparse.ArgumentParser(
        prog="adgen benchmark", description="Evaluate Original and fine-tuned models; print the ADGEN table."
    )
    add_model_arguments(parser, BenchmarkArgs)
    args = parse_model(parser, BenchmarkArgs, argv)
    setup_logging()
    try:
        document = run_benchmark(args)
    except (BenchmarkError, EvaluationSetupError, DatasetError, TrainingSetupError) as error:
        print(f"adgen benchmark: error: {error}", file=sys.stderr)
        return 2
    print(document["markdown"])
    return 0
