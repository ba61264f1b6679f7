"""The dataset registry (`dataset_info.json`) and a loader that reports every invalid line.

The registry format is the one of ChatGLM-Efficient-Tuning: each name maps to a `file_name` under the
registry folder and a `columns` mapping from roles (`prompt`, `query`, `response`, `history`,
`system`) to the keys of each JSON line. An empty string maps a role to nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REGISTRY_FILE = "dataset_info.json"
ROLES = ("prompt", "query", "response", "history", "system")
REQUIRED_ROLES = ("prompt", "response")


class DatasetError(ValueError):
    """A dataset that cannot be used: unknown name, missing file, invalid line in strict mode, no rows."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: Path
    columns: dict[str, str]


@dataclass(frozen=True)
class Example:
    """One prompt/response pair, with the optional system text and earlier turns."""

    prompt: str
    response: str
    system: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class InvalidLine:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def load_registry(dataset_dir: Path) -> dict[str, DatasetSpec]:
    """Read `dataset_info.json` in `dataset_dir` into specs keyed by dataset name."""
    registry_path = Path(dataset_dir) / REGISTRY_FILE
    if not registry_path.is_file():
        raise DatasetError(f"dataset registry not found: {registry_path}; set --dataset_dir or DATA_DIR")
    try:
        raw = json.loads(registry_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"invalid JSON in {registry_path}: {error}") from error
    if not isinstance(raw, dict):
        raise DatasetError(f"{registry_path} must contain a JSON object of dataset names")

    specs = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise DatasetError(f"{registry_path}: dataset {name!r} needs a string `file_name`")
        columns = entry.get("columns") or {}
        mapped = {role: columns.get(role, role if role in REQUIRED_ROLES else "") or "" for role in ROLES}
        specs[name] = DatasetSpec(name=name, path=Path(dataset_dir) / entry["file_name"], columns=mapped)
    return specs


def resolve_datasets(names: str, dataset_dir: Path) -> list[DatasetSpec]:
    """Look up comma-separated dataset names, naming the registered ones when a name is unknown."""
    registry = load_registry(dataset_dir)
    requested = [name.strip() for name in names.split(",") if name.strip()]
    if not requested:
        raise DatasetError("no dataset given; pass --dataset with a registered name")
    unknown = [name for name in requested if name not in registry]
    if unknown:
        raise DatasetError(
            f"unknown dataset {', '.join(map(repr, unknown))} in {Path(dataset_dir) / REGISTRY_FILE}; "
            f"registered: {', '.join(sorted(registry))}"
        )
    return [registry[name] for name in requested]


def _read_records(path: Path) -> list[tuple[int, Any, str | None]]:
    """Return (line number, parsed value or None, JSON error) for a JSON-lines or JSON-array file."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            return [(index + 1, value, None) for index, value in enumerate(json.loads(text))]
        except json.JSONDecodeError as error:
            return [(error.lineno, None, f"invalid JSON: {error.msg}")]
    records: list[tuple[int, Any, str | None]] = []
    # Split on newlines only: str.splitlines() also breaks at U+2028 and U+0085, which JSON strings
    # written with ensure_ascii=False may contain.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line), None))
        except json.JSONDecodeError as error:
            records.append((number, None, f"invalid JSON: {error.msg} at column {error.colno}"))
    return records


def _check_text(record: dict[str, Any], key: str, required: bool) -> str | None:
    """Return why `record[key]` cannot be used as text, or None when it can."""
    if key not in record:
        return f"missing column {key!r}" if required else None
    value = record[key]
    if not isinstance(value, str):
        return f"column {key!r} is not a string (got {type(value).__name__})"
    if required and not value.strip():
        return f"empty column {key!r}"
    return None


def _to_example(record: Any, columns: dict[str, str]) -> Example | str:
    """Build an example from one parsed line, or return why the line is invalid."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for role in ("prompt", "response", "query", "system"):
        key = columns[role]
        if key:
            problem = _check_text(record, key, required=role in REQUIRED_ROLES)
            if problem:
                return problem

    prompt = record[columns["prompt"]]
    query = record.get(columns["query"], "") if columns["query"] else ""
    if query:
        prompt = f"{prompt}\n{query}"
    history: list[tuple[str, str]] = []
    if columns["history"] and record.get(columns["history"]) is not None:
        turns = record[columns["history"]]
        if not isinstance(turns, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(part, str) for part in turn)
            for turn in turns
        ):
            return f"column {columns['history']!r} must be a list of [prompt, response] string pairs"
        history = [(turn[0], turn[1]) for turn in turns]
    system = record.get(columns["system"]) if columns["system"] else None
    return Example(
        prompt=prompt, response=record[columns["response"]], system=system or None, history=history
    )


def load_examples(
    names: str, dataset_dir: Path, strict: bool = False, max_samples: int | None = None
) -> list[Example]:
    """Load and concatenate registered datasets.

    Invalid lines are logged with file, line number and reason and skipped, or raise `DatasetError`
    with `strict`. A dataset with no valid rows raises `DatasetError` naming it.
    """
    examples: list[Example] = []
    for spec in resolve_datasets(names, dataset_dir):
        if not spec.path.is_file():
            raise DatasetError(
                f"file of dataset {spec.name!r} not found: {spec.path}; run `make data` or fix dataset_info.json"
            )
        valid: list[Example] = []
        invalid: list[InvalidLine] = []
        for number, record, json_error in _read_records(spec.path):
            outcome = json_error or _to_example(record, spec.columns)
            if isinstance(outcome, Example):
                valid.append(outcome)
                if max_samples is not None and len(valid) >= max_samples:
                    break
                continue
            bad = InvalidLine(spec.path, number, outcome)
            if strict:
                raise DatasetError(f"invalid line in dataset {spec.name!r}: {bad} (drop --strict to skip it)")
            logger.warning("skipping invalid line %s", bad)
            invalid.append(bad)
        if invalid:
            logger.warning(
                "dataset %s: skipped %d invalid lines of %d",
                spec.name,
                len(invalid),
                len(valid) + len(invalid),
            )
        if not valid:
            raise DatasetError(f"dataset {spec.name!r} has no valid rows in {spec.path}")
        logger.info("dataset %s: %d rows from %s", spec.name, len(valid), spec.path)
        examples.extend(valid)
    return examples
