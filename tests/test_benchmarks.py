"""`python -m benchmarks.run --quick`: every section runs and the report files are written.

Speed is not asserted: figures from a shared machine are not a test result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import JSON_FILE, MARKDOWN_FILE, TITLES
from benchmarks.run import SECTIONS
from tests.conftest import REPO

QUICK_TIMEOUT_SECONDS = 300


@pytest.mark.slow
def test_quick_run_writes_every_section(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.run", "--quick",
            "--dev-file", str(REPO / "data/adgen_sample.json"),
            "--output-dir", str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_SECONDS,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / JSON_FILE).read_text(encoding="utf-8"))
    assert list(document["sections"]) == list(SECTIONS)
    for key, section in document["sections"].items():
        assert section["error"] is None, f"{key}: {section['error']}"
    markdown = (tmp_path / MARKDOWN_FILE).read_text(encoding="utf-8")
    for key in SECTIONS:
        assert f"## {TITLES[key]}\n" in markdown
    assert "## Machine and versions" in markdown
    assert document["machine"]["transformers"]
