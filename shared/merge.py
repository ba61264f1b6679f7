"""`adgen merge`: fold a LoRA adapter into its base model and publish the merged folder atomically.

Decisions:

- The base is loaded in float32 and never quantized, because merging into quantized weights
  loses the adapter's update. The merged weights are saved in the base's own dtype (config.json
  `dtype`), so the merged folder is the size of the base.
- The adapter is checked before any weights load: it needs adapter_config.json of a LoRA adapter
  and its weights, and the base must have the fingerprint that training recorded in
  adgen_base.json. A checkpoint-* folder uses the record of the training folder above it.
- The result is written to a hidden folder beside the output and renamed into place. An existing
  output is first renamed aside, so a reader finds the old folder, no folder, or the new one,
  never a half-written one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.modeling.architectures import BASE_RECORD, base_fingerprint
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")
MAX_SHARD_SIZE = "2GB"


class MergeError(ValueError):
    """An adapter that cannot be merged: missing files, not LoRA, or trained on another base."""


@dataclass(frozen=True)
class AdapterBase:
    """The base model an adapter is applied to, after the fingerprint check."""

    name: str
    path: str
    fingerprint: str | None


def read_base_record(adapter_dir: Path) -> dict:
    """Return adgen_base.json of an adapter, or of the training folder above a checkpoint-* folder."""
    for folder in (adapter_dir, adapter_dir.parent):
        record_path = folder / BASE_RECORD
        if record_path.is_file():
            return json.loads(record_path.read_text(encoding="utf-8"))
    return {}


def check_adapter_folder(adapter_dir: Path) -> dict:
    """Return the adapter's peft config, raising MergeError when the folder is not a LoRA adapter."""
    if not adapter_dir.is_dir():
        raise MergeError(f"adapter folder {adapter_dir} not found")
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise MergeError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}, so it is not a peft adapter; "
            "pass the output_dir of a LoRA training run or one of its checkpoint-* folders"
        )
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        raise MergeError(
            f"{adapter_dir} has no LoRA weights ({' or '.join(ADAPTER_WEIGHTS)}); the training run "
            "may not have finished saving"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise MergeError(
            f"{adapter_dir} contains a {config.get('peft_type')} adapter, but only LoRA adapters can be merged"
        )
    return config


def resolve_adapter_base(adapter_dir: Path, base_model: str | None, settings: Settings) -> AdapterBase:
    """Pick the base for `adapter_dir` and reject one whose fingerprint differs from training's.

    Without `base_model` the base recorded at training time is used: its folder when it still
    exists, else its name, else peft's `base_model_name_or_path`, else BASE_MODEL.
    """
    from shared.modeling.loader import resolve_model

    peft_config = check_adapter_folder(adapter_dir)
    record = read_base_record(adapter_dir)
    peft_base = peft_config.get("base_model_name_or_path")
    recorded_path = record.get("path")
    if base_model:
        name = base_model
    elif recorded_path and Path(recorded_path).is_dir():
        name = recorded_path
    else:
        name = record.get("base_model") or peft_base or settings.base_model
    path = resolve_model(name, settings)
    is_local = (Path(path) / "config.json").is_file()
    fingerprint = base_fingerprint(path) if is_local else None

    expected = record.get("fingerprint")
    if expected is None and peft_base and (Path(peft_base) / "config.json").is_file():
        expected = base_fingerprint(peft_base)  # No record: peft's base path is the next best hint.
    if expected and fingerprint and expected != fingerprint:
        trained_on = record.get("base_model") or peft_base or "another base"
        raise MergeError(
            f"adapter {adapter_dir} was trained on {trained_on} (fingerprint {expected}), but the base "
            f"{path} has fingerprint {fingerprint}; pass --model_name_or_path with the training base"
        )
    if not expected or not fingerprint:
        # NOTE: a hub base is not downloaded just to hash it, so a wrong hub base is not caught here.
        logger.warning(
            "could not verify that %s was trained on %s; no fingerprint to compare", adapter_dir, path
        )
    return AdapterBase(name=record.get("base_model") or name, path=path, fingerprint=fingerprint)


def _saved_dtype(model_path: str):
    """Return the dtype a base was saved in (config.json `dtype`), float32 when unknown."""
    import torch

    config_path = Path(model_path) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _check_output_dir(output_dir: Path, adapter_dir: Path) -> None:
    if output_dir.resolve() == adapter_dir.resolve() or adapter_dir.resolve() in output_dir.resolve().parents:
        raise MergeError(f"output_dir {output_dir} must not be the adapter folder or inside it")
    if output_dir.exists():
        looks_like_model = (output_dir / "config.json").is_file() or (output_dir / BASE_RECORD).is_file()
        if not output_dir.is_dir() or not (looks_like_model or not any(output_dir.iterdir())):
            raise MergeError(
                f"output_dir {output_dir} exists and is not a model folder; remove it or choose another path"
            )


def _publish(staging: Path, output_dir: Path) -> None:
    """Move `staging` to `output_dir`, renaming an existing output aside first and deleting it after."""
    previous = None
    if output_dir.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-old-", dir=output_dir.parent))
        os.replace(output_dir, previous / output_dir.name)
    os.replace(staging, output_dir)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def merge_adapter(
    adapter_dir: Path,
    output_dir: Path,
    base_model: str | None = None,
    settings: Settings | None = None,
) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into its base and publish the result at `output_dir`."""
    import torch
    from peft import PeftModel

    from shared.modeling.loader import load_model, load_tokenizer

    settings = settings or get_settings()
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    base = resolve_adapter_base(adapter_dir, base_model, settings)
    _check_output_dir(output_dir, adapter_dir)
    started = time.monotonic()
    logger.info("merging %s into %s", adapter_dir, base.path)

    model = load_model(base.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(_saved_dtype(base.path))
    has_tokenizer = any((adapter_dir / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base.path, padding_side="left")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp creates 0700; the published folder is read by other services' users.
    try:
        model.save_pretrained(staging, max_shard_size=MAX_SHARD_SIZE)
        tokenizer.save_pretrained(staging)
        record = {
            "base_model": base.name,
            "path": base.path,
            "fingerprint": base.fingerprint,
            "finetuning_type": "lora",
            "merged_from": str(adapter_dir.resolve()),
        }
        (staging / BASE_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        _publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # Only left behind when saving failed.
    logger.info("merged model saved to %s in %.1fs", output_dir, time.monotonic() - started)
    return output_dir


def main(argv: list[str]) -> int:
    from shared.logs import setup_logging

    parser = argparse.ArgumentParser(prog="adgen merge", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", required=True, type=Path, help="LoRA adapter folder to merge.")
    parser.add_argument("--output_dir", required=True, type=Path, help="Folder of the merged model.")
    parser.add_argument(
        "--model_name_or_path",
        help="Base model; default: the base recorded in the adapter's adgen_base.json, else BASE_MODEL.",
    )
    args = parser.parse_args(argv)
    setup_logging()
    from shared.data.registry import DatasetError

    try:
        output_dir = merge_adapter(args.checkpoint_dir, args.output_dir, args.model_name_or_path)
    except (MergeError, DatasetError) as error:
        print(f"adgen merge: error: {error}", file=sys.stderr)
        return 2
    print(output_dir)
    return 0
