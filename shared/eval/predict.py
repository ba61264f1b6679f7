"""`adgen eval`: generate ad copy for a dataset, score it with BLEU-4 and ROUGE, and measure the loss.

The flags are those of ChatGLM-Efficient-Tuning's evaluation command (`--do_eval --checkpoint_dir
--predict_with_generate`), and the output files those of its prediction mode: generated_predictions.jsonl
and all_results.json with `predict_*` keys. Divergences from that tool:

- Decoding is greedy unless `--do_sample` is given, so runs of one model on one machine score the same.
- Prompts are generated in dataset order, in batches padded on the left. Each prompt gets its own
  budget of `max_new_tokens`, so a long prompt never shortens the answers of the others.
- generated_predictions.jsonl is appended and flushed after each batch. A rerun with the same
  output_dir keeps the complete lines, cuts a trailing partial line and continues after them. It is
  rejected when eval_settings.json shows another model, dataset or decoding setting.
- Scores cover every line of the predictions file, resumed lines included. `predict_samples_per_second`
  covers only this run's generation and is null when nothing was left to generate.
- `eval_loss` is the teacher-forced cross-entropy per response token over all samples. It is a
  token-weighted mean, so it does not depend on the batch size, unlike the Trainer's mean of batch means.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.argparsing import add_model_arguments, parse_model
from shared.hparams import EvalArgs
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "all_results.json"
SETTINGS_FILE = "eval_settings.json"
# Settings that change the predictions. A resumed run must match the first run on each of them.
RESUME_KEYS = (
    "dataset",
    "model_path",
    "checkpoint_dir",
    "source_prefix",
    "max_source_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "seed",
    "dtype",
)

ProgressCallback = Callable[[dict], None]


class EvaluationSetupError(ValueError):
    """Invalid evaluation input found before generation: a missing adapter, a wrong base, a stale output."""


@dataclass(frozen=True)
class ModelSelection:
    """The base model, adapters and tokenizer that one evaluation loads."""

    base_model: str
    model_path: str
    adapters: list[str]
    tokenizer_path: str


def parse_checkpoints(checkpoint_dir: str | None) -> list[str]:
    """Split `--checkpoint_dir` into adapter folders, rejecting any that is not a LoRA adapter."""
    adapters = [part.strip() for part in (checkpoint_dir or "").split(",") if part.strip()]
    for adapter in adapters:
        folder = Path(adapter)
        if not folder.is_dir():
            raise EvaluationSetupError(
                f"--checkpoint_dir {adapter!r} not found; pass the output_dir of `adgen train`"
            )
        if (folder / "adapter_config.json").is_file():
            continue
        if (folder / "config.json").is_file():
            raise EvaluationSetupError(
                f"--checkpoint_dir {adapter!r} contains full model weights, not a LoRA adapter; "
                "pass it as --model_name_or_path instead"
            )
        raise EvaluationSetupError(
            f"--checkpoint_dir {adapter!r} has no adapter_config.json, so it is not a LoRA adapter; "
            "pass the output_dir of `adgen train --finetuning_type lora`"
        )
    return adapters


def read_base_record(adapter: str) -> dict[str, Any] | None:
    """Return the adgen_base.json that training wrote next to an adapter, or None when there is none."""
    from shared.modeling.architectures import BASE_RECORD

    path = Path(adapter) / BASE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvaluationSetupError(
            f"invalid JSON in {path}: {error}; retrain the adapter or fix the file"
        ) from error
    if not isinstance(record, dict):
        raise EvaluationSetupError(f"{path} must contain a JSON object; retrain the adapter or fix the file")
    return record


def _check_recorded_base(model_path: str, record: dict[str, Any], adapter: str) -> str:
    """Return a base folder whose fingerprint matches the one recorded with `adapter`."""
    from shared.modeling.architectures import base_fingerprint

    fingerprint = record.get("fingerprint")
    if not fingerprint or not Path(model_path).is_dir() or base_fingerprint(model_path) == fingerprint:
        return model_path
    recorded_path = record.get("path")
    if recorded_path and Path(recorded_path).is_dir() and base_fingerprint(recorded_path) == fingerprint:
        logger.info(
            "%s differs from the base of %s; using the recorded base %s", model_path, adapter, recorded_path
        )
        return recorded_path
    raise EvaluationSetupError(
        f"adapter {adapter!r} was trained on another {record.get('base_model')!r} than the one at "
        f"{model_path} (fingerprint {fingerprint}); pass its base model with --model_name_or_path"
    )


def select_model(args: EvalArgs, settings: Settings) -> ModelSelection:
    """Select the base model and tokenizer: the flag, else the first adapter's recorded base, else BASE_MODEL."""
    from shared.modeling.loader import resolve_model

    adapters = parse_checkpoints(args.checkpoint_dir)
    record = read_base_record(adapters[0]) if adapters else None
    base_model = args.model_name_or_path or (record or {}).get("base_model") or settings.base_model
    model_path = resolve_model(base_model, settings)
    if record and not args.model_name_or_path:
        model_path = _check_recorded_base(model_path, record, adapters[0])
    # Training saves the tokenizer next to the adapter, and the last adapter's copy is used.
    with_tokenizer = [adapter for adapter in adapters if (Path(adapter) / "tokenizer_config.json").is_file()]
    tokenizer_path = with_tokenizer[-1] if with_tokenizer else model_path
    return ModelSelection(base_model, model_path, adapters, tokenizer_path)


def select_dtype(args: EvalArgs):
    """Return the torch dtype of `--fp16` / `--bf16` where the hardware runs it, else float32."""
    import torch

    cuda = torch.cuda.is_available()
    if args.fp16 and cuda:
        return torch.float16
    if args.bf16 and cuda and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if args.fp16 or args.bf16:
        logger.warning("--fp16 / --bf16 need a GPU that supports them; evaluating in float32 instead")
    return torch.float32


def encode_prompts(tokenizer, examples: Sequence, args: EvalArgs) -> tuple[list[list[int]], int]:
    """Return the prompt ids of each example and how many prompts were cut to max_source_length."""
    from shared.modeling.template import encode_truncated_prompt

    prompts = []
    truncated = 0
    for example in examples:
        ids, cut = encode_truncated_prompt(
            tokenizer,
            example.prompt,
            args.max_source_length,
            args.source_prefix,
            system=example.system,
            history=example.history,
        )
        prompts.append(ids)
        truncated += cut
    if truncated:
        logger.warning(
            "truncated %d of %d prompts to --max_source_length %d",
            truncated,
            len(examples),
            args.max_source_length,
        )
    return prompts, truncated


def decode_prediction(tokenizer, token_ids: Sequence[int], stop_ids: Sequence[int] = ()) -> str:
    """Decode generated ids up to the first stop token, dropping ids the tokenizer cannot decode.

    Ids outside the vocabulary (a model head larger than the tokenizer) and negative ids (the -100
    label padding) are skipped instead of raising, and special tokens are removed.
    """
    stops = set(stop_ids)
    vocab_size = len(tokenizer)
    decodable = []
    for token_id in token_ids:
        token_id = int(token_id)
        if token_id in stops:
            break
        if 0 <= token_id < vocab_size:
            decodable.append(token_id)
    return tokenizer.decode(decodable, skip_special_tokens=True).strip()


def stop_token_ids(model, tokenizer) -> list[int]:
    """Return the ids that end a response: the generation config's eos ids (a list for GLM)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def build_generation_config(model, tokenizer, args: EvalArgs):
    """Return the model's generation config with this run's decoding settings."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.update(
        max_new_tokens=args.max_new_tokens,
        max_length=None,
        do_sample=args.do_sample,
        temperature=args.temperature if args.do_sample else None,
        top_p=args.top_p if args.do_sample else None,
        top_k=None,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return config


def generate_batch(
    model, tokenizer, prompts: list[list[int]], generation_config, stop_ids: list[int]
) -> list[str]:
    """Generate one response per prompt, with the batch padded on the left."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        output = model.generate(**batch, generation_config=generation_config)
    new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
    return [decode_prediction(tokenizer, ids, stop_ids) for ids in new_tokens]


def compute_eval_loss(model, tokenizer, examples: Sequence, args: EvalArgs) -> float:
    """Return the mean teacher-forced loss per response token, with labels masked on the prompt."""
    import torch

    from shared.modeling.template import IGNORE_INDEX, encode_example

    encoded = [
        encode_example(tokenizer, example, args.source_prefix, args.max_source_length, args.max_target_length)
        for example in examples
    ]
    encoded.sort(key=lambda item: len(item.input_ids))  # Similar lengths per batch waste less padding.
    total_loss = 0.0
    total_tokens = 0
    size = args.per_device_eval_batch_size
    for start in range(0, len(encoded), size):
        chunk = encoded[start : start + size]
        width = max(len(item.input_ids) for item in chunk)
        # Right padding keeps position ids 0..n-1 for each sample without passing them explicitly.
        input_ids = [
            item.input_ids + [tokenizer.pad_token_id] * (width - len(item.input_ids)) for item in chunk
        ]
        labels = [item.labels + [IGNORE_INDEX] * (width - len(item.labels)) for item in chunk]
        mask = [[1] * len(item.input_ids) + [0] * (width - len(item.input_ids)) for item in chunk]
        labels_tensor = torch.tensor(labels, device=model.device)
        with torch.inference_mode():
            output = model(
                input_ids=torch.tensor(input_ids, device=model.device),
                attention_mask=torch.tensor(mask, device=model.device),
                labels=labels_tensor,
            )
        # The model shifts labels by one and averages over the tokens whose label is not ignored.
        tokens = int((labels_tensor[:, 1:] != IGNORE_INDEX).sum())
        total_loss += float(output.loss) * tokens
        total_tokens += tokens
    return total_loss / total_tokens if total_tokens else 0.0


def check_resume_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Reject a rerun whose settings differ from the run that wrote the predictions already present."""
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        logger.warning("%s is missing; resuming without checking that the settings match", path)
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    changed = [key for key in RESUME_KEYS if previous.get(key) != settings.get(key)]
    if changed:
        details = ", ".join(f"{key}: {previous.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise EvaluationSetupError(
            f"{output_dir / PREDICTIONS_FILE} was written with other settings ({details}); "
            "pass another --output_dir or delete the file to start over"
        )


def read_completed_predictions(path: Path, examples: Sequence) -> tuple[int, int]:
    """Count the complete prediction lines at the start of `path` and the bytes they take.

    A line is complete when it ends with a newline and parses as JSON. Each must belong to the
    example at the same position, else `EvaluationSetupError` is raised.
    """
    if not path.is_file():
        return 0, 0
    data = path.read_bytes()
    records = []
    offset = 0
    while (end := data.find(b"\n", offset)) >= 0:
        try:
            records.append(json.loads(data[offset:end].decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        offset = end + 1

    if len(records) > len(examples):
        raise EvaluationSetupError(
            f"{path} has {len(records)} predictions but the dataset has {len(examples)} samples; "
            "pass another --output_dir or delete the file"
        )
    for number, (record, example) in enumerate(zip(records, examples, strict=False), start=1):
        if (
            not isinstance(record, dict)
            or record.get("prompt") != example.prompt
            or record.get("label") != example.response
        ):
            raise EvaluationSetupError(
                f"line {number} of {path} is not the prediction of sample {number} of this dataset; "
                "pass another --output_dir or delete the file"
            )
    return len(records), offset


def prepare_resume(output_dir: Path, examples: Sequence, run: dict[str, Any]) -> int:
    """Return how many predictions a previous run left, cutting off an incomplete last line.

    The file is changed only after its lines and eval_settings.json have been checked.
    """
    path = output_dir / PREDICTIONS_FILE
    done, complete_bytes = read_completed_predictions(path, examples)
    if done:
        check_resume_settings(output_dir, run)
    if path.is_file() and path.stat().st_size > complete_bytes:
        logger.warning(
            "cutting %d bytes of an incomplete line at the end of %s",
            path.stat().st_size - complete_bytes,
            path,
        )
        with path.open("r+b") as handle:
            handle.truncate(complete_bytes)
    return done


def describe_run(args: EvalArgs, selection: ModelSelection, dtype) -> dict[str, Any]:
    """Return the settings recorded in eval_settings.json and all_results.json."""
    return {
        "dataset": args.dataset,
        "base_model": selection.base_model,
        "model_path": selection.model_path,
        "checkpoint_dir": ",".join(selection.adapters) or None,
        "source_prefix": args.source_prefix,
        "max_source_length": args.max_source_length,
        "max_target_length": args.max_target_length,
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature if args.do_sample else None,
        "top_p": args.top_p if args.do_sample else None,
        "seed": args.seed,
        "per_device_eval_batch_size": args.per_device_eval_batch_size,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _estimate_remaining(started: float, generated: int, remaining: int) -> float | None:
    if not generated:
        return None
    return round((time.monotonic() - started) / generated * remaining, 1)


def generate_predictions(
    model,
    tokenizer,
    examples: Sequence,
    prompts: list[list[int]],
    args: EvalArgs,
    path: Path,
    done: int,
    on_progress: ProgressCallback | None,
) -> tuple[int, float]:
    """Append predictions for examples `done` onward to `path` and return their count and the seconds taken."""
    from tqdm.auto import tqdm
    from transformers import set_seed

    set_seed(args.seed)
    config = build_generation_config(model, tokenizer, args)
    stop_ids = list(config.eos_token_id)
    total = len(examples)
    size = args.per_device_eval_batch_size
    started = time.monotonic()
    generated = 0
    if on_progress:
        on_progress({"samples_done": done, "total_samples": total, "remaining_seconds": None})
    # disable=None shows the bar on a terminal only, so worker logs get no bar.
    with (
        path.open("a", encoding="utf-8") as handle,
        tqdm(total=total, initial=done, unit="sample", desc="generate", disable=None) as bar,
    ):
        for start in range(done, total, size):
            batch_examples = examples[start : start + size]
            predictions = generate_batch(model, tokenizer, prompts[start : start + size], config, stop_ids)
            for example, prediction in zip(batch_examples, predictions, strict=True):
                record = {"prompt": example.prompt, "predict": prediction, "label": example.response}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            generated += len(batch_examples)
            bar.update(len(batch_examples))
            logger.debug("generated samples %d-%d of %d", start + 1, start + len(batch_examples), total)
            if on_progress:
                remaining = _estimate_remaining(started, generated, total - done - generated)
                on_progress(
                    {"samples_done": done + generated, "total_samples": total, "remaining_seconds": remaining}
                )
    return generated, time.monotonic() - started


def run_evaluation(
    args: EvalArgs, settings: Settings | None = None, on_progress: ProgressCallback | None = None
) -> dict:
    """Generate predictions for `args.dataset`, score them and write all_results.json in output_dir.

    Returns the results written. `on_progress` receives `samples_done`, `total_samples` and
    `remaining_seconds` (null until a batch has finished) after each batch.
    """
    from shared.data.registry import load_examples
    from shared.eval.metrics import score_predictions_file
    from shared.modeling.loader import load_model, load_tokenizer

    settings = settings or get_settings()
    selection = select_model(args, settings)
    examples = load_examples(
        args.dataset,
        Path(args.dataset_dir or settings.data_dir),
        strict=args.strict,
        max_samples=args.max_samples,
    )
    dtype = select_dtype(args)
    run = describe_run(args, selection, dtype)
    output_dir = Path(args.output_dir)
    predictions_path = output_dir / PREDICTIONS_FILE
    done = prepare_resume(output_dir, examples, run)
    if done:
        logger.info("resuming after %d of %d predictions in %s", done, len(examples), predictions_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SETTINGS_FILE).write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")

    logger.info(
        "evaluating %s with adapters %s on %d samples of %s",
        selection.model_path,
        selection.adapters or "none",
        len(examples),
        args.dataset,
    )
    tokenizer = load_tokenizer(selection.tokenizer_path, padding_side="left")
    model = load_model(selection.model_path, dtype=dtype, adapters=selection.adapters)
    model.to(_device())
    prompts, truncated = encode_prompts(tokenizer, examples, args)
    generated, seconds = generate_predictions(
        model, tokenizer, examples, prompts, args, predictions_path, done, on_progress
    )
    eval_loss = compute_eval_loss(model, tokenizer, examples, args)

    scores = score_predictions_file(predictions_path)
    results: dict[str, Any] = {f"predict_{key}": round(value, 4) for key, value in scores.items()}
    results["predict_samples_per_second"] = round(generated / seconds, 3) if generated and seconds else None
    results["predict_truncated_prompts"] = truncated
    results["eval_loss"] = round(eval_loss, 4)
    results.update(run)
    (output_dir / RESULTS_FILE).write_text(
        json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    logger.info("wrote %s (%d new predictions in %.1f s)", output_dir / RESULTS_FILE, generated, seconds)
    return results


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str]) -> int:
    from shared.data.registry import DatasetError
    from shared.logs import setup_logging

    parser = argparse.ArgumentParser(
        prog="adgen eval",
        description="Generate predictions for a dataset and score them with BLEU-4 and ROUGE.",
    )
    add_model_arguments(parser, EvalArgs)
    args = parse_model(parser, EvalArgs, argv)
    setup_logging()
    try:
        results = run_evaluation(args)
    except (EvaluationSetupError, DatasetError) as error:
        print(f"adgen eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0
