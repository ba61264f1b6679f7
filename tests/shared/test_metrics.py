"""Tests of the ADGEN metrics against a straight transcription of the protocol and pinned values."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import jieba
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from shared.eval.metrics import (
    METRIC_KEYS,
    MetricAccumulator,
    PredictionsFileError,
    _lcs_length,
    main,
    score_pair,
    score_predictions_file,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEV_FILE = Path(__file__).resolve().parents[3] / "shared/data/AdvertiseGen/dev.json"

REFERENCE = "这款连衣裙采用白色棉麻面料，版型宽松，简约大方。"
ALL_ZERO = dict.fromkeys(METRIC_KEYS, 0.0)
ALL_HUNDRED = dict.fromkeys(METRIC_KEYS, 100.0)


def straight_protocol(prediction: str, reference: str) -> dict[str, float]:
    """Score one pair by calling jieba, rouge-chinese and nltk exactly as the protocol is written."""
    jieba.setLogLevel(logging.WARNING)
    hypothesis = list(jieba.cut(prediction))
    reference_words = list(jieba.cut(reference))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference_words).split()) == 0:
        rouge = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(reference_words))[0]
    scores = {key: round(value["f"] * 100, 4) for key, value in rouge.items()}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = round(bleu * 100, 4)
    return scores


def scores(bleu_4: float, rouge_1: float, rouge_2: float, rouge_l: float) -> dict[str, float]:
    return {"bleu-4": bleu_4, "rouge-1": rouge_1, "rouge-2": rouge_2, "rouge-l": rouge_l}


# (prediction, reference, pinned scores). Each pinned value was computed with `straight_protocol`
# under jieba 0.42.1, rouge-chinese 1.0.3 and nltk 3.10.4.
CASES = {
    "identical": (REFERENCE, REFERENCE, ALL_HUNDRED),
    "partial overlap": (
        "这款衬衫采用白色面料，版型修身。",
        REFERENCE,
        scores(25.8448, 69.5652, 36.3636, 66.6667),
    ),
    "empty prediction": ("", REFERENCE, ALL_ZERO),
    "empty reference": ("这款连衣裙很好看。", "", ALL_ZERO),
    "empty both": ("", "", ALL_ZERO),
    "whitespace only": (" \n\t\u3000", REFERENCE, ALL_ZERO),
    "punctuation only": ("。，！？", REFERENCE, scores(0.128, 23.5294, 0.0, 11.1111)),
    "punctuation only both": ("。", "。", scores(35.3553, 100.0, 0.0, 100.0)),
    "emoji": ("😀这款连衣裙很好看🎉", REFERENCE, scores(9.6867, 30.0, 21.0526, 28.5714)),
    "latin and digits": (
        "iPhone 13 Pro搭载A15芯片，续航提升2.5小时。",
        "iPhone 13 Pro采用A15芯片，续航更长。",
        scores(61.2942, 72.7273, 50.0, 72.7273),
    ),
    "unk in reference": (
        "这款连衣裙采用棉麻面料，简约大方。",
        "这款<UNK>连衣裙采用棉麻面料，简约大方。",
        scores(68.0747, 86.9565, 76.1905, 86.9565),
    ),
    "newlines between sentences": (
        "版型宽松。\n\n面料柔软！ \n 舒适透气？",
        REFERENCE,
        scores(12.1286, 34.7826, 8.3333, 23.0769),
    ),
    "5000 repeated characters": ("好" * 5000, REFERENCE, ALL_ZERO),
}


@pytest.mark.parametrize(("prediction", "reference", "expected"), CASES.values(), ids=CASES.keys())
def test_score_pair_pinned(prediction: str, reference: str, expected: dict[str, float]) -> None:
    result = score_pair(prediction, reference)
    assert list(result) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=0.01), key


@pytest.mark.parametrize(("prediction", "reference", "expected"), CASES.values(), ids=CASES.keys())
def test_score_pair_straight_protocol(prediction: str, reference: str, expected: dict[str, float]) -> None:
    assert score_pair(prediction, reference) == straight_protocol(prediction, reference)


def test_score_pair_values_are_floats() -> None:
    # nltk returns the int 0 when no character matches.
    for key, value in score_pair("", REFERENCE).items():
        assert type(value) is float, key


def test_score_pair_long_repetition() -> None:
    # rouge-chinese took 8 s and 1.2 GB on this pair in one CPU run, so it is not called here.
    text = "好" * 5000
    assert score_pair(text, text) == ALL_HUNDRED


def test_score_pair_long_unknown_characters() -> None:
    # "龘" is not in jieba's dictionary, so segmentation goes through its HMM.
    result = score_pair("龘" * 5000, "龘" * 4000)
    assert result["rouge-1"] == 100.0
    assert result["rouge-2"] == 100.0
    assert 0.0 < result["rouge-l"] < 100.0


def test_score_pair_emits_no_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for prediction, reference, _ in CASES.values():
            score_pair(prediction, reference)


def test_score_pair_random_text() -> None:
    # Sentence ends, quotes, newlines and mixed scripts exercise rouge-chinese's sentence splitting.
    alphabet = list("。！？?”’….\n \t\u3000好坏衣裙款式a1<>，😀") + ["......", "……", "连衣裙", "<UNK>"]
    generator = random.Random(20240601)
    for _ in range(300):
        prediction = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 30)))
        reference = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 30)))
        assert score_pair(prediction, reference) == straight_protocol(prediction, reference), (
            prediction,
            reference,
        )


def textbook_lcs_length(first: list[str], second: list[str]) -> int:
    previous = [0] * (len(second) + 1)
    for word in first:
        current = [0]
        for index, other in enumerate(second):
            current.append(previous[index] + 1 if word == other else max(previous[index + 1], current[index]))
        previous = current
    return previous[-1]


def test_lcs_length_random_lists() -> None:
    generator = random.Random(7)
    for _ in range(300):
        first = [generator.choice("abcd") for _ in range(generator.randint(0, 80))]
        second = [generator.choice("abcde") for _ in range(generator.randint(0, 80))]
        assert _lcs_length(first, second) == textbook_lcs_length(first, second), (first, second)


def test_accumulator_mean_over_samples() -> None:
    pairs = [
        (REFERENCE, REFERENCE),
        ("这款衬衫采用白色面料，版型修身。", REFERENCE),
        ("", REFERENCE),
        ("  ", REFERENCE),
    ]
    accumulator = MetricAccumulator()
    for prediction, reference in pairs:
        accumulator.add(prediction, reference)
    result = accumulator.result()

    per_sample = [straight_protocol(prediction, reference) for prediction, reference in pairs]
    for key in METRIC_KEYS:
        expected = sum(sample[key] for sample in per_sample) / len(pairs)
        assert result[key] == pytest.approx(expected, abs=0.01), key
    assert result["rouge-1"] == pytest.approx((100.0 + 69.5652) / 4, abs=0.01)
    assert result["samples"] == 4
    assert result["empty_predictions"] == 2


def test_accumulator_zero_samples() -> None:
    assert MetricAccumulator().result() == {**ALL_ZERO, "samples": 0, "empty_predictions": 0}


def write_predictions(path: Path, pairs: list[tuple[str, str]]) -> Path:
    lines = [
        json.dumps({"prompt": "类型#裙", "predict": p, "label": r}, ensure_ascii=False) for p, r in pairs
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PAIRS = [
    (REFERENCE, REFERENCE),
    ("这款衬衫采用白色面料，版型修身。", REFERENCE),
    ("", "这款<UNK>连衣裙采用棉麻面料，简约大方。"),
]


def expected_means(pairs: list[tuple[str, str]]) -> dict[str, float]:
    per_sample = [straight_protocol(prediction, reference) for prediction, reference in pairs]
    return {key: sum(sample[key] for sample in per_sample) / len(pairs) for key in METRIC_KEYS}


def test_predictions_file_means(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "generated_predictions.jsonl", PAIRS)
    with path.open("a", encoding="utf-8") as file:
        file.write("\n   \n")  # Blank lines are not samples.

    result = score_predictions_file(path)

    for key, value in expected_means(PAIRS).items():
        assert result[key] == pytest.approx(value, abs=0.01), key
    assert result["samples"] == 3
    assert result["empty_predictions"] == 1


def test_predictions_file_line_separator(tmp_path: Path) -> None:
    # json.dumps leaves U+2028 unescaped, and str.splitlines() would cut the line there.
    path = write_predictions(tmp_path / "predictions.jsonl", [("版型宽松\u2028简约大方", REFERENCE)])
    assert score_predictions_file(path)["samples"] == 1


def test_predictions_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    assert score_predictions_file(path) == {**ALL_ZERO, "samples": 0, "empty_predictions": 0}


INVALID_LINES = {
    "invalid json": ('{"predict": "好", "label": ', "invalid JSON"),
    "not an object": ('["好", "好"]', "expected a JSON object, got list"),
    "missing label": ('{"predict": "好"}', "missing key 'label'"),
    "missing predict": ('{"label": "好"}', "missing key 'predict'"),
    "label not a string": ('{"predict": "好", "label": ["好"]}', "key 'label' is list, not a string"),
    "predict null": ('{"predict": null, "label": "好"}', "key 'predict' is NoneType, not a string"),
}


@pytest.mark.parametrize(("line", "reason"), INVALID_LINES.values(), ids=INVALID_LINES.keys())
def test_predictions_file_invalid_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"predict": "好", "label": "好"}\n' + line + "\n", encoding="utf-8")

    with pytest.raises(PredictionsFileError) as raised:
        score_predictions_file(path)

    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert message.startswith(f"{path}:2: ")
    assert reason in message
    assert '{"predict": "...", "label": "..."}' in message


def test_predictions_file_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"predict": "ok", "label": "ok"}\n{"predict": "\xff", "label": "ok"}\n')

    with pytest.raises(PredictionsFileError, match="invalid UTF-8") as raised:
        score_predictions_file(path)
    assert str(raised.value).startswith(f"{path}:2: ")


def test_main_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_predictions(tmp_path / "generated_predictions.jsonl", PAIRS)

    assert main([str(path)]) == 0

    output = capsys.readouterr()
    assert output.err == ""
    assert len(output.out.splitlines()) == 1
    result = json.loads(output.out)
    assert list(result) == [*METRIC_KEYS, "samples", "empty_predictions"]
    for key, value in expected_means(PAIRS).items():
        assert result[key] == pytest.approx(value, abs=0.01), key
        assert result[key] == round(result[key], 4), key
    assert result["samples"] == 3
    assert result["empty_predictions"] == 1


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.jsonl"

    assert main([str(path)]) == 2

    output = capsys.readouterr()
    assert output.out == ""
    assert f"file not found: {path}" in output.err


def test_main_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert f"cannot read {tmp_path}" in capsys.readouterr().err


def test_main_invalid_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"predict": "好", "label": "好"}\n{"predict": "好"}\n', encoding="utf-8")

    assert main([str(path)]) == 2

    output = capsys.readouterr()
    assert output.out == ""
    assert f"{path}:2: missing key 'label'" in output.err


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "score", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def test_cli_score_subprocess(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "generated_predictions.jsonl", PAIRS)

    completed = run_cli(str(path))

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""  # jieba's dictionary loads without its debug lines.
    result = json.loads(completed.stdout)
    for key, value in expected_means(PAIRS).items():
        assert result[key] == pytest.approx(value, abs=0.01), key
    assert result["samples"] == 3


def test_cli_score_subprocess_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text("not json\n", encoding="utf-8")

    completed = run_cli(str(path))

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert f"{path}:1: invalid JSON" in completed.stderr


def load_dev_summaries(count: int) -> list[str]:
    dev_file = Path(os.environ.get("ADGEN_DEV", DEFAULT_DEV_FILE))
    if not dev_file.is_file():
        pytest.skip(f"ADGEN dev file not found: {dev_file}; set ADGEN_DEV to its path")
    summaries = []
    with dev_file.open(encoding="utf-8") as file:
        for line in file:
            summaries.append(json.loads(line)["summary"])
            if len(summaries) == count:
                break
    return summaries


def test_dev_summaries_against_themselves() -> None:
    summaries = load_dev_summaries(50)
    accumulator = MetricAccumulator()
    for summary in summaries:
        accumulator.add(summary, summary)
    result = accumulator.result()

    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(100.0, abs=0.01), key
    assert result["samples"] == len(summaries)


def test_dev_summaries_shifted_reference() -> None:
    summaries = load_dev_summaries(51)
    pairs = list(zip(summaries[:-1], summaries[1:], strict=True))
    accumulator = MetricAccumulator()
    for prediction, reference in pairs:
        assert score_pair(prediction, reference) == straight_protocol(prediction, reference)
        accumulator.add(prediction, reference)
    result = accumulator.result()

    for key, value in expected_means(pairs).items():
        assert result[key] == pytest.approx(value, abs=0.01), key
    assert 0.0 < result["rouge-1"] < 100.0
