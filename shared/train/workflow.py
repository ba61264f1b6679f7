"""`adgen train`: supervised fine-tuning with LoRA (peft) or all weights, on Hugging Face `Trainer`.

The same function runs alone, under `accelerate launch` on several processes, and inside a trainer
worker's job. Divergences from ChatGLM-Efficient-Tuning's trainer:

- An output folder that already contains checkpoints is resumed from its newest one, not rejected;
  `--overwrite_output_dir` starts over. A retried job therefore continues where it stopped.
- `--fp16` / `--bf16` on a machine without support fall back to float32 with one warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.argparsing import add_model_arguments, parse_model
from shared.hparams import TrainArgs
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class TrainingSetupError(ValueError):
    """Invalid training input found before the first step: a bad flag value, target or dataset."""


def resolve_precision(fp16: bool, bf16: bool) -> tuple[bool, bool]:
    """Keep a mixed-precision flag only where the hardware runs it, warning once otherwise."""
    import torch

    cuda = torch.cuda.is_available()
    if fp16 and not cuda:
        logger.warning("--fp16 needs a CUDA GPU and none is available; training in float32 instead")
        fp16 = False
    if bf16 and not (cuda and torch.cuda.is_bf16_supported()):
        logger.warning("--bf16 needs a GPU with bfloat16 support; training in float32 instead")
        bf16 = False
    return fp16, bf16


def find_resume_checkpoint(args: TrainArgs, output_dir: Path) -> str | None:
    """Pick the checkpoint to resume: the one named, or the newest in output_dir unless overwriting."""
    requested = args.resume_from_checkpoint
    if requested and requested.lower() not in {"true", "false"}:
        if not Path(requested).is_dir():
            raise TrainingSetupError(f"--resume_from_checkpoint {requested!r} is not a checkpoint folder")
        return requested
    if (requested or "").lower() == "false" or not output_dir.is_dir():
        return None
    if args.overwrite_output_dir:
        return None
    from shared.train.checkpoints import newest_complete_checkpoint

    newest = newest_complete_checkpoint(output_dir)
    last = str(newest) if newest else None
    if last:
        logger.info("resuming from %s; pass --overwrite_output_dir to start over", last)
    elif (requested or "").lower() == "true":
        raise TrainingSetupError(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir}")
    return last


def attach_lora(model, args: TrainArgs):
    """Wrap `model` with a LoRA adapter, rejecting target names the model does not have."""
    import torch
    from peft import LoraConfig, get_peft_model

    from shared.modeling.architectures import OUTPUT_HEADS, parse_lora_targets, unknown_lora_targets

    linear_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        - set(OUTPUT_HEADS)
    )
    targets = parse_lora_targets(args.lora_target) or linear_names
    unknown = unknown_lora_targets(targets, linear_names)
    if unknown:
        raise TrainingSetupError(
            f"--lora_target {', '.join(unknown)} not found in {type(model).__name__}; "
            f"its linear layers are: {', '.join(linear_names)}"
        )
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha or 2 * args.lora_rank,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
    )
    return get_peft_model(model, config)


def build_training_arguments(args: TrainArgs, output_dir: Path):
    import torch
    from accelerate.utils import get_int_from_env
    from transformers import Seq2SeqTrainingArguments

    distributed = get_int_from_env(["WORLD_SIZE"], 1) > 1  # Set by `accelerate launch` and torchrun.
    fp16, bf16 = resolve_precision(args.fp16, args.bf16)
    disable_tqdm = args.disable_tqdm if args.disable_tqdm is not None else not sys.stderr.isatty()
    return Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        fp16=fp16,
        bf16=bf16,
        activation_checkpointing=args.gradient_checkpointing,  # transformers 5 name of the flag.
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        ddp_find_unused_parameters=args.ddp_find_unused_parameters,
        # Without CUDA, `accelerate launch --multi_gpu` processes train on the CPU over gloo.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        disable_tqdm=disable_tqdm,
        report_to="none",
        remove_unused_columns=False,
    )


def run_training(args: TrainArgs, settings: Settings | None = None, callbacks: Sequence = ()) -> dict:
    """Fine-tune as `args` specifies and save the adapter (or full weights) in `args.output_dir`.

    Returns the metrics written to all_results.json. `callbacks` are extra `TrainerCallback`s, used by
    the job worker for progress and cancellation.
    """
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Seq2SeqTrainer

    from shared.modeling.architectures import BASE_RECORD, base_fingerprint
    from shared.modeling.loader import load_model, load_tokenizer, resolve_model
    from shared.train.callbacks import TrainerLogCallback, plot_loss
    from shared.train.dataset import build_train_dataset

    settings = settings or get_settings()
    output_dir = Path(args.output_dir)
    resume = find_resume_checkpoint(args, output_dir)
    if args.overwrite_output_dir and output_dir.is_dir() and not resume:
        shutil.rmtree(output_dir)

    model_path = resolve_model(args.model_name_or_path, settings)
    tokenizer = load_tokenizer(model_path, padding_side="right")
    dataset = build_train_dataset(tokenizer, args, Path(args.dataset_dir or settings.data_dir))

    training_args = build_training_arguments(args, output_dir)
    model = load_model(model_path, trainable=True)
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    if args.finetuning_type == "lora":
        model = attach_lora(model, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None
        ),
        processing_class=tokenizer,
        callbacks=[TrainerLogCallback(output_dir, log_lines=training_args.disable_tqdm), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=resume)

    trainer.save_model()
    metrics = dict(result.metrics)
    metrics["train_samples"] = len(dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.padding_side = "left"  # Generation pads on the left; saved for evaluation and serving.
        tokenizer.save_pretrained(output_dir)
        record = {
            "base_model": args.model_name_or_path or settings.base_model,
            "path": model_path,
            "fingerprint": base_fingerprint(model_path) if Path(model_path).is_dir() else None,
            "finetuning_type": args.finetuning_type,
        }
        (output_dir / BASE_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if args.plot_loss:
            plot_loss(output_dir)
        logger.info("saved %s model to %s", args.finetuning_type, output_dir)
    return metrics


def main(argv: list[str]) -> int:
    from shared.data.registry import DatasetError
    from shared.logs import setup_logging

    parser = argparse.ArgumentParser(prog="adgen train", description="Fine-tune a GLM model on ADGEN.")
    add_model_arguments(parser, TrainArgs)
    args = parse_model(parser, TrainArgs, argv)
    setup_logging()
    try:
        run_training(args)
    except (TrainingSetupError, DatasetError) as error:
        print(f"adgen train: error: {error}", file=sys.stderr)
        return 2
    return 0
