"""The benchmark report: one `Section` per measurement, written as Markdown and as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKDOWN_FILE = "benchmarks.md"
JSON_FILE = "benchmarks.json"
TITLES = {
    "training": "Training throughput",
    "prediction": "Batched prediction",
    "streaming": "Streaming overhead",
    "concurrency": "Concurrent streams",
    "queue": "Queue latency",
    "gpu": "GPU efficiency",
}


@dataclass
class Section:
    """One measurement against its baseline, with the figures and the verdict on its target."""

    key: str
    title: str
    measured: str  # Description of the measurement, one or two sentences.
    baseline: str
    settings: dict[str, Any]
    columns: list[str]
    rows: list[list[Any]]
    ratio: float | None = None
    ratio_name: str = ""  # Formula of the ratio, e.g. "API tokens/s ÷ plain tokens/s".
    target: float | None = None  # Minimum ratio, or None for a section without a target.
    notes: list[str] = field(default_factory=list)
    explanation: str | None = None  # Reason the target was missed, when it was.
    data: dict[str, Any] = field(default_factory=dict)  # Per-run figures, for the JSON file only.
    error: str | None = None  # Set when the section could not run.

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def verdict(self) -> str:
        """Return e.g. `✅ met: 4.1× (target ≥ 3×)` or `❌ missed by 12%: 0.79× (target ≥ 0.9×)`."""
        if self.error:
            return f"❌ not measured: {self.error}"
        if self.ratio is None:
            return "no target; figures only"
        figure = f"{self.ratio:.2f}× (target ≥ {self.target:g}×)"
        if self.met:
            return f"✅ met: {figure}"
        assert self.target is not None
        shortfall = (self.target - self.ratio) / self.target * 100
        return f"❌ missed by {shortfall:.0f}%: {figure}"

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["met"] = self.met
        return document


def failed_section(key: str, error: str) -> Section:
    """Return the section of a measurement that raised, so the report still lists it."""
    return Section(key, TITLES[key], "", "", {}, [], [], error=error)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def _settings_line(settings: dict[str, Any]) -> str:
    return ", ".join(f"{name} {_cell(value)}" for name, value in settings.items())


def render_section(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.error:
        return [*lines, f"**Result:** {section.verdict()}", ""]
    lines += [f"**Measured:** {section.measured}", "", f"**Baseline:** {section.baseline}", ""]
    lines += [f"**Settings:** {_settings_line(section.settings)}.", ""]
    lines += [*_table(section.columns, section.rows), ""]
    if section.ratio is not None:
        lines += [f"**Ratio** ({section.ratio_name}): {section.verdict()}", ""]
    if section.explanation:
        lines += [f"**Why it is missed:** {section.explanation}", ""]
    lines += [f"- {note}" for note in section.notes]
    if section.notes:
        lines.append("")
    return lines


def render_markdown(header: dict[str, Any], sections: list[Section]) -> str:
    """Return the whole page: how it was made, the machine, a summary table, then each section."""
    lines = ["# Benchmarks", "", *header["intro"], ""]
    lines += ["## Machine and versions", "", *_table(["item", "value"], list(header["machine"].items())), ""]
    lines += ["## Run settings", "", *_table(["setting", "value"], list(header["settings"].items())), ""]
    summary = [
        [section.title, "–" if section.ratio is None else f"{section.ratio:.2f}×", section.verdict()]
        for section in sections
    ]
    lines += ["## Summary", "", *_table(["measurement", "ratio", "result"], summary), ""]
    for section in sections:
        lines += render_section(section)
    return "\n".join(lines).rstrip() + "\n"


def write_report(output_dir: Path, header: dict[str, Any], sections: list[Section]) -> tuple[Path, Path]:
    """Write benchmarks.md and benchmarks.json into `output_dir` and return both paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = output_dir / MARKDOWN_FILE
    json_path = output_dir / JSON_FILE
    markdown_path.write_text(render_markdown(header, sections), encoding="utf-8")
    document = {
        "machine": header["machine"],
        "settings": header["settings"],
        "sections": {section.key: section.to_json() for section in sections},
    }
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown_path, json_path
