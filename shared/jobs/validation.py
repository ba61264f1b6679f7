"""Checks of a job request against this server: registered datasets, base models and LoRA targets.

Pydantic checks what a request contains on its own (types, bounds, unknown fields); these checks need
the server's data and model folders. Each returns errors in pydantic's shape, with a `loc` naming
the field, so the API returns 422 exactly as it does for a bad number. Nothing here imports torch:
a model's layer names come from `model_type` in its config.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.data.registry import DatasetError, load_registry
from shared.hparams import EvalOptions, TrainOptions
from shared.modeling.architectures import LINEAR_MODULES, parse_lora_targets, read_model_type
from shared.modeling.tiny import VARIANTS
from shared.settings import Settings

Loc = tuple[str | int, ...]
ErrorDetail = dict[str, Any]


def field_error(loc: Loc, message: str, value: Any) -> ErrorDetail:
    return {"type": "value_error", "loc": loc, "msg": message, "input": value}


def known_base_models(settings: Settings) -> list[str]:
    """Names a request may give as `model_name_or_path`: the tiny models, BASE_MODEL and the
    complete model folders (with a config.json) directly under the models volume."""
    names = {*VARIANTS, settings.base_model}
    if settings.models_dir.is_dir():
        names.update(
            folder.name
            for folder in settings.models_dir.iterdir()
            if not folder.name.startswith(".") and (folder / "config.json").is_file()
        )
    return sorted(names)


def check_base_model(name: str | None, settings: Settings, loc: Loc) -> list[ErrorDetail]:
    if name is None or name in known_base_models(settings):
        return []
    known = ", ".join(known_base_models(settings))
    return [field_error(loc, f"unknown base model {name!r}; known base models: {known}", name)]


def check_datasets(names: str, settings: Settings, loc: Loc) -> list[ErrorDetail]:
    """Require each comma-separated name to be registered under DATA_DIR with its file present."""
    requested = [name.strip() for name in names.split(",") if name.strip()]
    if not requested:
        return [field_error(loc, "no dataset given; name a registered dataset", names)]
    try:
        registry = load_registry(settings.data_dir)
    except DatasetError as error:
        return [field_error(loc, f"no dataset is registered on this server: {error}", names)]
    errors = []
    for name in requested:
        spec = registry.get(name)
        if spec is None:
            registered = ", ".join(sorted(registry))
            errors.append(
                field_error(loc, f"unknown dataset {name!r}; registered datasets: {registered}", names)
            )
        elif not spec.path.is_file():
            errors.append(
                field_error(
                    loc, f"the file of dataset {name!r} is missing on this server ({spec.path.name})", names
                )
            )
    return errors


def linear_modules_of(model_name: str, settings: Settings) -> Sequence[str] | None:
    """Layer names LoRA may target in `model_name`, or None when this server cannot tell."""
    folder = settings.models_dir / model_name
    if (folder / "config.json").is_file():
        model_type = read_model_type(str(folder))
    elif model_name in VARIANTS:
        model_type = VARIANTS[model_name]  # a tiny model not built yet
    elif Path(model_name).is_dir():
        model_type = read_model_type(model_name)
    else:
        return None  # a hub id: training checks the targets once the model is loaded
    return LINEAR_MODULES.get(model_type or "")


def check_lora_target(
    lora_target: str | None, model_name: str, settings: Settings, loc: Loc
) -> list[ErrorDetail]:
    targets = parse_lora_targets(lora_target)
    if targets is None:
        return []
    available = linear_modules_of(model_name, settings)
    if not targets:
        return [
            field_error(
                loc, "no module name given; omit lora_target to target every linear layer", lora_target
            )
        ]
    if available is None:
        return []
    unknown = [name for name in targets if name not in available]
    if not unknown:
        return []
    message = f"unknown LoRA target {', '.join(unknown)} for {model_name}; its linear layers are: {', '.join(available)}"
    return [field_error(loc, message, lora_target)]


def check_train_job(
    options: TrainOptions, model_name: str | None, eval_options: EvalOptions | None, settings: Settings
) -> list[ErrorDetail]:
    """Check a training request body; `loc`s start with "body" as FastAPI's own errors do."""
    errors = check_datasets(options.dataset, settings, ("body", "dataset"))
    model_errors = check_base_model(model_name, settings, ("body", "model_name_or_path"))
    errors += model_errors
    if options.finetuning_type == "lora" and not model_errors:
        model = model_name or settings.base_model
        errors += check_lora_target(options.lora_target, model, settings, ("body", "lora_target"))
    if eval_options is not None:
        errors += check_datasets(eval_options.dataset, settings, ("body", "eval", "dataset"))
    return errors


def check_eval_job(options: EvalOptions, model_name: str | None, settings: Settings) -> list[ErrorDetail]:
    """Check an evaluation request body's dataset and base model."""
    errors = check_datasets(options.dataset, settings, ("body", "dataset"))
    return errors + check_base_model(model_name, settings, ("body", "model_name_or_path"))
