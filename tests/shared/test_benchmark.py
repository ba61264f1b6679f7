"""`adgen benchmark`: the ADGEN table files, the default adapter and the held-out split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.eval.benchmark import (
    HELDOUT_BASE,
    HELDOUT_EVAL,
    HELDOUT_TRAIN,
    ROWS,
    TABLE_JSON,
    TABLE_MARKDOWN,
    BenchmarkArgs,
    BenchmarkError,
    find_newest_adapter,
    main,
    resolve_dev_file,
    split_dev_file,
)
from shared.eval.predict import PREDICTIONS_FILE
from shared.settings import get_settings

SAMPLE_FILE = Path("data/adgen_sample.json")


pytestmark = pytest.mark.usefixtures("one_thread", "restore_logging")


def read_table(folder: Path) -> tuple[list[str], dict]:
    markdown = (folder / TABLE_MARKDOWN).read_text(encoding="utf-8").splitlines()
    document = json.loads((folder / TABLE_JSON).read_text(encoding="utf-8"))
    return markdown, document


def write_dev_file(path: Path, count: int) -> list[str]:
    lines = SAMPLE_FILE.read_text(encoding="utf-8").splitlines()[:count]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_table_of_original_and_adapter(trained_adapter, tmp_path, capsys):
    output_dir = tmp_path / "benchmark"

    code = main(
        [
            "--dataset", "adgen_sample",
            "--samples", "4",
            "--adapters", str(trained_adapter),
            "--output_dir", str(output_dir),
            "--max_new_tokens", "8",
        ]
    )  # fmt: skip

    assert code == 0
    markdown, document = read_table(output_dir)
    columns = ["Original", f"LoRA ({trained_adapter.name})"]
    assert document["columns"] == columns
    assert list(document["rows"]) == list(ROWS)
    for row, values in document["rows"].items():
        assert list(values) == columns, f"row {row} lacks a column"
        assert all(isinstance(value, float) for value in values.values())
    table_lines = [line for line in markdown if line.startswith("|")]
    assert table_lines[0] == f"| | {columns[0]} | {columns[1]} |"
    assert [line.split("|")[1].strip() for line in table_lines[2:]] == list(ROWS)
    assert document["models"][columns[1]]["checkpoint_dir"] == str(trained_adapter)
    assert document["samples"] == 4
    for folder in (output_dir / "runs").iterdir():
        assert len((folder / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()) == 4
    assert "| Rouge-l |" in capsys.readouterr().out


def test_newest_adapter_is_default(tmp_path):
    for index, name in enumerate(["old", "new", "middle"]):
        folder = tmp_path / name
        folder.mkdir()
        config = folder / "adapter_config.json"
        config.write_text("{}")
        os.utime(config, (1_000_000 + index * (10 if name != "new" else 1000),) * 2)
    (tmp_path / "not-an-adapter").mkdir()

    assert find_newest_adapter(tmp_path) == tmp_path / "new"
    assert find_newest_adapter(tmp_path / "not-an-adapter") is None


def test_split_holds_out_last_lines(tmp_path):
    dev_file = tmp_path / "dev.json"
    lines = write_dev_file(dev_file, 10)

    counts = split_dev_file(dev_file, 3, tmp_path / "data")

    assert counts == (7, 3)
    data = tmp_path / "data"
    assert (data / "train.json").read_text(encoding="utf-8").splitlines() == lines[:7]
    assert (data / "eval.json").read_text(encoding="utf-8").splitlines() == lines[7:]
    base = [json.loads(line) for line in (data / "base.json").read_text(encoding="utf-8").splitlines()]
    assert [record["summary"] for record in base] == [json.loads(line)["summary"] for line in lines[:7]]
    assert len({record["content"] for record in base}) == 1, "the base prompts must carry no tags"
    registry = json.loads((data / "dataset_info.json").read_text())
    assert set(registry) == {HELDOUT_TRAIN, HELDOUT_EVAL, HELDOUT_BASE}


def test_split_rejects_short_or_missing_file(tmp_path):
    dev_file = tmp_path / "dev.json"
    write_dev_file(dev_file, 3)

    with pytest.raises(BenchmarkError, match="leaves none to train on"):
        split_dev_file(dev_file, 3, tmp_path / "data")
    with pytest.raises(BenchmarkError, match="not found"):
        split_dev_file(tmp_path / "missing.json", 3, tmp_path / "data")


def test_missing_dev_file_exits_2(tmp_path, capsys):
    code = main(
        ["--protocol", "heldout", "--dev_file", str(tmp_path / "dev.json"), "--output_dir", str(tmp_path)]
    )

    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.startswith("adgen benchmark: error: dev file ")
    assert "not found" in stderr
    assert "Traceback" not in stderr


def test_dev_file_defaults_to_dataset(tmp_path):
    registry = {"my_dev": {"file_name": "dev.json"}, "other": {"file_name": "other.json"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry))

    chosen = resolve_dev_file(BenchmarkArgs(dataset="my_dev", dataset_dir=str(tmp_path)), get_settings())
    given = resolve_dev_file(BenchmarkArgs(dataset="my_dev", dev_file="elsewhere.json"), get_settings())

    assert chosen == tmp_path / "dev.json"
    assert given == Path("elsewhere.json")
    with pytest.raises(BenchmarkError, match="splits one file"):
        resolve_dev_file(BenchmarkArgs(dataset="my_dev,other", dataset_dir=str(tmp_path)), get_settings())


@pytest.mark.slow
def test_heldout_protocol_end_to_end(tmp_path):
    dev_file = tmp_path / "dev.json"
    write_dev_file(dev_file, 24)
    output_dir = tmp_path / "benchmark"

    code = main(
        [
            "--protocol", "heldout",
            "--dev_file", str(dev_file),
            "--samples", "4",
            "--output_dir", str(output_dir),
            "--base_steps", "2",
            "--max_steps", "2",
            "--per_device_train_batch_size", "4",
            "--max_new_tokens", "4",
        ]
    )  # fmt: skip

    assert code == 0
    _, document = read_table(output_dir)
    assert document["columns"] == ["Original", "LoRA (adgen_lora)"]
    assert document["training"]["train_lines"] == 20
    assert document["training"]["heldout_lines"] == 4
    heldout = output_dir / "heldout"
    assert (heldout / "adgen_lora" / "adapter_config.json").is_file()
    base_record = json.loads((heldout / "adgen_lora" / "adgen_base.json").read_text())
    assert base_record["path"] == str(heldout / "tiny-glm")
