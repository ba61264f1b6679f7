"""Loading of base models, adapters and tokenizers: one path for the tiny model and real weights.

A model name is resolved in this order: `tiny-glm` / `tiny-glm4` (built under the models volume on
first use), an existing folder, a folder of that name under the models volume, else a hub id that
`from_pretrained` fetches. Supported architectures are the ones transformers runs natively:
`GlmForCausalLM` (glm-4-9b-chat-hf) and `Glm4ForCausalLM` (GLM-4-0414).
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@contextmanager
def _file_lock(path: Path):
    """Hold an exclusive lock on `path` so concurrent processes build the tiny model once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tiny_model(name: str, settings: Settings) -> Path:
    """Return the folder of a tiny model, building it from DATA_DIR's datasets if it is missing."""
    from shared.modeling.tiny import VARIANTS, build_tiny_model, corpus_texts

    folder = settings.models_dir / name
    if (folder / "config.json").is_file():
        return folder
    with _file_lock(settings.models_dir / f".{name}.lock"):
        if not (folder / "config.json").is_file():
            logger.info("building the %s model at %s (first use)", name, folder)
            build_tiny_model(folder, corpus_texts(settings.data_dir, None), VARIANTS[name])
    return folder


def resolve_model(name_or_path: str | None, settings: Settings | None = None) -> str:
    """Turn a model setting into a folder path or a hub id that `from_pretrained` accepts."""
    from shared.modeling.tiny import VARIANTS

    settings = settings or get_settings()
    name = name_or_path or settings.base_model
    if name in VARIANTS:
        return str(ensure_tiny_model(name, settings))
    if Path(name).is_dir():
        return str(Path(name))
    under_volume = settings.models_dir / name
    if under_volume.is_dir():
        return str(under_volume)
    return name


def load_tokenizer(path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype=None, adapters: list[str] | None = None, trainable: bool = False):
    """Load a causal LM, apply `adapters` in order, and put it in eval mode unless `trainable`."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    for adapter in adapters or []:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
        logger.info("loaded adapter %s", adapter)
    if not trainable:
        model.eval()
    return model
