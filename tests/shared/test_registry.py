"""Dataset registry and loader: formats users know, and a clear report for every invalid line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shared.data.registry import DatasetError, load_examples, load_registry, resolve_datasets
from tests.conftest import REPO

ADGEN_COLUMNS = {"prompt": "content", "query": "", "response": "summary", "history": ""}


def write_registry(folder: Path, datasets: dict[str, tuple[str, str]], columns=ADGEN_COLUMNS) -> Path:
    """Write dataset files and a dataset_info.json registering them; returns the folder."""
    info = {}
    for name, (file_name, text) in datasets.items():
        (folder / file_name).write_bytes(text.encode("utf-8"))
        info[name] = {"file_name": file_name, "columns": columns}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def line(content, summary) -> str:
    return json.dumps({"content": content, "summary": summary}, ensure_ascii=False)


def test_repo_registry_has_adgen_entries():
    registry = load_registry(REPO / "data")

    assert registry["adgen_train"].path == REPO / "data/AdvertiseGen/train.json"
    assert registry["adgen_dev"].path == REPO / "data/AdvertiseGen/dev.json"
    assert registry["adgen_train"].columns["prompt"] == "content"
    assert registry["adgen_train"].columns["response"] == "summary"


def test_bundled_sample_loads_cleanly(caplog):
    with caplog.at_level(logging.WARNING):
        examples = load_examples("adgen_sample", REPO / "data", strict=True)

    assert len(examples) >= 50
    assert all(example.prompt.startswith("类型#") for example in examples)
    assert all(example.response for example in examples)


def test_byte_order_mark_accepted(tmp_path):
    text = "\ufeff" + line("类型#裙*颜色#红色", "红色连衣裙。") + "\n"
    write_registry(tmp_path, {"bom": ("bom.json", text)})

    examples = load_examples("bom", tmp_path, strict=True)

    assert examples[0].prompt == "类型#裙*颜色#红色"


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"content": "类型#裙", "summary": ', "invalid JSON"),
        (json.dumps({"content": "类型#裙"}), "missing column 'summary'"),
        (json.dumps({"content": "类型#裙", "summary": "  "}), "empty column 'summary'"),
        (json.dumps({"content": 7, "summary": "好看"}), "column 'content' is not a string (got int)"),
        (json.dumps(["类型#裙", "好看"]), "expected a JSON object, got list"),
    ],
)
def test_invalid_line_reported_and_skipped(tmp_path, caplog, bad_line, reason):
    text = "\n".join([line("类型#裙", "第一行。"), bad_line, line("类型#裤", "第三行。")]) + "\n"
    write_registry(tmp_path, {"mixed": ("mixed.json", text)})

    with caplog.at_level(logging.WARNING, logger="shared.data.registry"):
        examples = load_examples("mixed", tmp_path)

    assert [example.response for example in examples] == ["第一行。", "第三行。"]
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"mixed.json:2: {reason}" in message for message in messages)
    assert any("skipped 1 invalid lines of 3" in message for message in messages)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("not json", "invalid JSON"),
        (json.dumps({"summary": "好看"}), "missing column 'content'"),
    ],
)
def test_strict_stops_at_first_invalid_line(tmp_path, bad_line, reason):
    text = "\n".join([line("类型#裙", "第一行。"), bad_line]) + "\n"
    write_registry(tmp_path, {"mixed": ("mixed.json", text)})

    with pytest.raises(DatasetError) as caught:
        load_examples("mixed", tmp_path, strict=True)

    assert "mixed.json:2" in str(caught.value)
    assert reason in str(caught.value)


def test_zero_valid_rows_names_dataset(tmp_path):
    write_registry(tmp_path, {"broken": ("broken.json", "oops\n{}\n")})

    with pytest.raises(DatasetError, match="dataset 'broken' has no valid rows"):
        load_examples("broken", tmp_path)


def test_unknown_dataset_lists_registered(tmp_path):
    write_registry(
        tmp_path, {"one": ("one.json", line("类型#裙", "好。")), "two": ("two.json", line("a", "b"))}
    )

    with pytest.raises(DatasetError) as caught:
        resolve_datasets("one,three", tmp_path)

    assert "'three'" in str(caught.value)
    assert "registered: one, two" in str(caught.value)


def test_missing_file_suggests_make_data(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"gone": {"file_name": "gone.json"}}))

    with pytest.raises(DatasetError, match="make data"):
        load_examples("gone", tmp_path)


def test_comma_list_concatenates_datasets(tmp_path):
    write_registry(
        tmp_path,
        {"a": ("a.json", line("类型#裙", "甲。") + "\n"), "b": ("b.json", line("类型#裤", "乙。") + "\n")},
    )

    examples = load_examples("a, b", tmp_path)

    assert [example.response for example in examples] == ["甲。", "乙。"]


def test_json_array_file_and_system_column(tmp_path):
    rows = [{"instruction": "类型#裙", "input": "颜色#白色", "output": "白裙。", "sys": "你是文案。"}]
    columns = {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "",
        "system": "sys",
    }
    write_registry(tmp_path, {"alpaca": ("alpaca.json", json.dumps(rows, ensure_ascii=False))}, columns)

    example = load_examples("alpaca", tmp_path, strict=True)[0]

    assert example.prompt == "类型#裙\n颜色#白色"
    assert example.system == "你是文案。"


def test_line_separator_inside_string_is_one_line(tmp_path):
    text = line("类型#裙", "第一句\u2028第二句。") + "\n"
    write_registry(tmp_path, {"sep": ("sep.json", text)})

    examples = load_examples("sep", tmp_path, strict=True)

    assert examples[0].response == "第一句\u2028第二句。"


def test_max_samples_limits_rows():
    examples = load_examples("adgen_sample", REPO / "data", max_samples=5)

    assert len(examples) == 5
