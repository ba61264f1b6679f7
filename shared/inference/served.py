"""Selection and loading of the served model: merged weights, a base, or base + adapter.

At start-up the engine serves SERVED_MODEL when set, else the newest merged folder under the
merged volume, else BASE_MODEL. A hot reload names a folder by path or by name. Either must lie
inside VOLUMES_DIR, so that a remote caller cannot make the API read arbitrary folders.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.settings import Settings

logger = logging.getLogger(__name__)


class LoadTargetError(ValueError):
    """A reload target that is not a model folder or lies outside VOLUMES_DIR."""


@dataclass
class ServedModel:
    """A loaded model with what generation needs to know about it."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    stop_token_ids: frozenset[int]
    max_context: int
    # Keyword of the KV cache in `model.forward`: `cache` in transformers >= 5.2x, `past_key_values` before.
    cache_argument: str
    accepts_logits_to_keep: bool
    base: str | None = None
    loaded_at: float = field(default_factory=time.time)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        from shared.modeling.template import encode_prompt

        return encode_prompt(self.tokenizer, messages)


def is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def newest_merged_model(settings: Settings) -> Path | None:
    """Return the most recently written model folder under the merged volume, if any."""
    if not settings.merged_dir.is_dir():
        return None
    folders = [
        entry
        for entry in settings.merged_dir.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / "config.json").is_file()
    ]
    return max(folders, key=lambda entry: entry.stat().st_mtime, default=None)


def startup_source(settings: Settings) -> str:
    """Return what to serve at start-up: SERVED_MODEL, else the newest merged model, else BASE_MODEL.

    SERVED_MODEL may also be the name of a folder under the merged volume.
    """
    if settings.served_model:
        named = settings.merged_dir / settings.served_model
        if not Path(settings.served_model).is_dir() and named.is_dir():
            return str(named)
        return settings.served_model
    newest = newest_merged_model(settings)
    return str(newest) if newest is not None else settings.base_model


def resolve_load_target(path: str | None, name: str | None, settings: Settings) -> Path:
    """Return the folder a reload request names, by path or by name under the merged or models volume.

    Raises LoadTargetError for a folder outside VOLUMES_DIR or one without config.json or
    adapter_config.json, and FileNotFoundError for one that does not exist.
    """
    if (path is None) == (name is None):
        raise LoadTargetError("give exactly one of `path` or `name`")
    volumes = settings.volumes_dir.resolve()
    if name is not None:
        if not name or "/" in name or name.startswith("."):
            raise LoadTargetError(
                f"invalid model name {name!r}; use a folder name under {settings.merged_dir}"
            )
        candidates = [settings.merged_dir / name, settings.models_dir / name]
        folder = next((candidate for candidate in candidates if candidate.is_dir()), None)
        if folder is None:
            raise FileNotFoundError(
                f"no model named {name!r} in {settings.merged_dir} or {settings.models_dir}"
            )
    else:
        folder = Path(str(path))
    folder = folder.resolve()
    if folder != volumes and volumes not in folder.parents:
        raise LoadTargetError(
            f"{folder} is outside VOLUMES_DIR ({volumes}); only models in the volumes are served"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} not found")
    if not is_model_folder(folder):
        raise LoadTargetError(
            f"{folder} has neither config.json nor adapter_config.json, so it is not a model"
        )
    return folder


def load_served_model(source: str, settings: Settings, base_model: str | None = None) -> ServedModel:
    """Load `source` (a folder, a tiny model name or a hub id) for generation.

    An adapter folder is applied to its base (the recorded one, or `base_model`) and merged in
    memory, so serving it costs the same per token as a merged folder.
    """
    from shared.merge import TOKENIZER_FILES, resolve_adapter_base
    from shared.modeling.loader import load_model, load_tokenizer, resolve_model

    device, dtype = serving_device()
    folder = Path(source).expanduser()
    if (folder.is_absolute() or source.startswith(".")) and not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} not found")  # Not a hub id: do not ask the hub.
    base = None
    if (
        folder.is_dir()
        and (folder / "adapter_config.json").is_file()
        and not (folder / "config.json").is_file()
    ):
        adapter_base = resolve_adapter_base(folder, base_model, settings)
        model = load_model(adapter_base.path, adapters=[str(folder)]).merge_and_unload()
        has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
        tokenizer = load_tokenizer(str(folder) if has_tokenizer else adapter_base.path)
        path, base = str(folder), adapter_base.path
    else:
        path = resolve_model(source, settings)
        model = load_model(path)
        tokenizer = load_tokenizer(path)
    model = model.to(device=device, dtype=dtype).eval()
    name = Path(path).name if Path(path).is_dir() else path
    return ServedModel(
        name=name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        stop_token_ids=_stop_token_ids(model, tokenizer),
        max_context=_max_context(model, tokenizer),
        cache_argument="cache"
        if "cache" in inspect.signature(model.forward).parameters
        else "past_key_values",
        accepts_logits_to_keep="logits_to_keep" in inspect.signature(model.forward).parameters,
        base=base,
    )


def serving_device():
    """Return the device and dtype to serve on: the first CUDA GPU in bfloat16 (float16 without
    bfloat16 support), else the CPU in float32.
    """
    import torch

    # NOTE: the GPU path has not run in this project's tests, which have no GPU.
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def _stop_token_ids(model, tokenizer) -> frozenset[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(token_id for token_id in ids if token_id is not None)


def _max_context(model, tokenizer) -> int:
    config = model.config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "seq_length", None)
    return int(limit or tokenizer.model_max_length)


def describe(folder: Path) -> dict[str, Any]:
    """Return the provenance record (adgen_base.json) of a model folder, or an empty dict."""
    from shared.modeling.architectures import BASE_RECORD

    record_path = folder / BASE_RECORD
    if not record_path.is_file():
        return {}
    try:
        return json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("unreadable %s in %s", BASE_RECORD, folder)
        return {}
