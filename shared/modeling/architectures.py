"""Facts the stack records about each supported architecture without importing torch.

The API validates LoRA targets against these names before a job is queued; training checks them
again against the loaded model, which is the authority for architectures not listed here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Leaf names of the linear layers of each decoder layer, by `model_type` in config.json.
LINEAR_MODULES: dict[str, tuple[str, ...]] = {
    "glm": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    "glm4": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
}
OUTPUT_HEADS = ("lm_head",)
# Keys of config.json that change with the saving tool or folder, not with the model.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"}
BASE_RECORD = "adgen_base.json"


def read_model_type(model_path: str) -> str | None:
    """Return `model_type` from a local model folder's config.json, or None when it is unknown."""
    config_path = Path(model_path) / "config.json"
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text(encoding="utf-8")).get("model_type")


def parse_lora_targets(lora_target: str | None) -> list[str] | None:
    if lora_target is None:
        return None
    return [name.strip() for name in lora_target.split(",") if name.strip()]


def unknown_lora_targets(targets: list[str], available: list[str] | tuple[str, ...]) -> list[str]:
    return [name for name in targets if name not in available]


def base_fingerprint(model_path: str) -> str:
    """Hash of a base model's config and tokenizer, recorded with adapters to catch a wrong base.

    Weights are not read, because a 9B checkpoint would take minutes. Two tiny models built from
    different data differ in their tokenizer, so their fingerprints differ too.
    """
    folder = Path(model_path)
    digest = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    stable = {key: value for key, value in config.items() if key not in _VOLATILE_CONFIG_KEYS}
    digest.update(json.dumps(stable, sort_keys=True).encode())
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        digest.update(tokenizer_file.read_bytes())
    return digest.hexdigest()[:16]
