"""Tokenized training data: registered datasets, encoded with the chat template, labels masked."""

from __future__ import annotations

import logging
from pathlib import Path

from shared.data.registry import DatasetError, load_examples
from shared.hparams import TrainOptions
from shared.modeling.template import encode_example

logger = logging.getLogger(__name__)


def build_train_dataset(tokenizer, args: TrainOptions, dataset_dir: Path):
    """Return a `datasets.Dataset` of input_ids, attention_mask and labels, logging truncations."""
    from datasets import Dataset

    examples = load_examples(args.dataset, dataset_dir, strict=args.strict, max_samples=args.max_samples)
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    truncated = 0
    for example in examples:
        encoded = encode_example(
            tokenizer, example, args.source_prefix, args.max_source_length, args.max_target_length
        )
        truncated += encoded.truncated
        rows["input_ids"].append(encoded.input_ids)
        rows["attention_mask"].append([1] * len(encoded.input_ids))
        rows["labels"].append(encoded.labels)
    if not rows["input_ids"]:
        raise DatasetError(f"dataset {args.dataset!r} has no rows to train on")
    if truncated:
        logger.warning(
            "truncated %d of %d samples to --max_source_length %d / --max_target_length %d",
            truncated,
            len(examples),
            args.max_source_length,
            args.max_target_length,
        )
    logger.info("tokenized %d training samples", len(examples))
    return Dataset.from_dict(rows)
