"""Command lines built from pydantic models, so each option is described once, where it is declared.

Booleans follow Hugging Face's `HfArgumentParser`: `--fp16` alone means true and `--fp16 False`
is accepted too, which keeps the original fine-tuning commands working as they are written.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)

_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}


def str_to_bool(text: str) -> bool:
    """Parse a command-line boolean the way HfArgumentParser does."""
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one `--name` option per field of `model`, with the field's description as help."""
    for name, field in model.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = field.description or ""
        if default not in (None, "", False):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": name}
        if annotation is bool:
            kwargs.update(type=str_to_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(annotation) is Literal:
            kwargs.update(choices=list(typing.get_args(annotation)))
        elif annotation in (int, float):
            kwargs.update(type=annotation)
        else:
            kwargs.update(type=str)
        parser.add_argument(f"--{name}", required=field.is_required(), **kwargs)


def parse_model(parser: argparse.ArgumentParser, model: type[ModelT], argv: list[str]) -> ModelT:
    """Parse `argv` into `model`, turning a validation error into a usage error naming the option."""
    namespace = parser.parse_args(argv)
    try:
        return model.model_validate(vars(namespace))
    except ValidationError as error:
        problems = "; ".join(
            f"--{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        parser.error(problems)
        raise  # parser.error exits; this line only satisfies type checkers.
