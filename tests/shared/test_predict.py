"""`adgen eval`: output files, left-padded batches, resume, decoding edge cases and usage errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.eval.predict import (
    PREDICTIONS_FILE,
    RESULTS_FILE,
    SETTINGS_FILE,
    EvaluationSetupError,
    decode_prediction,
    main,
    run_evaluation,
)
from shared.hparams import EvalArgs
from tests.conftest import ADGEN_DEV, SOURCE_PREFIX, adgen_command

RESULT_KEYS = {
    "predict_bleu-4",
    "predict_rouge-1",
    "predict_rouge-2",
    "predict_rouge-l",
    "predict_samples",
    "predict_empty_predictions",
    "predict_samples_per_second",
    "predict_truncated_prompts",
    "eval_loss",
    "do_sample",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "per_device_eval_batch_size",
    "base_model",
    "model_path",
    "checkpoint_dir",
}


pytestmark = pytest.mark.usefixtures("one_thread", "restore_logging")


def quick_args(output_dir: Path, **overrides) -> EvalArgs:
    values = {
        "dataset": "adgen_sample",
        "max_samples": 8,
        "max_new_tokens": 12,
        "per_device_eval_batch_size": 4,
        "source_prefix": SOURCE_PREFIX,
        "output_dir": str(output_dir),
    }
    return EvalArgs(**(values | overrides))


def read_predictions(output_dir: Path) -> list[dict]:
    lines = (output_dir / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def read_samples(count: int) -> list[dict]:
    lines = Path("data/adgen_sample.json").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:count]]


def test_eval_command_writes_both_files(trained_adapter, tmp_path):
    output_dir = tmp_path / "adgen_results"
    command = adgen_command(
        "eval",
        "--do_eval",
        "--dataset", "adgen_sample",
        "--checkpoint_dir", str(trained_adapter),
        "--output_dir", str(output_dir),
        "--per_device_eval_batch_size", "4",
        "--source_prefix", SOURCE_PREFIX,
        "--predict_with_generate",
        "--max_samples", "8",
        "--max_new_tokens", "12",
    )  # fmt: skip

    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)

    assert completed.returncode == 0, completed.stderr
    predictions = read_predictions(output_dir)
    samples = read_samples(8)
    assert len(predictions) == 8
    assert [record["prompt"] for record in predictions] == [sample["content"] for sample in samples]
    assert [record["label"] for record in predictions] == [sample["summary"] for sample in samples]
    assert all(isinstance(record["predict"], str) for record in predictions)
    results = json.loads((output_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    assert set(results) >= RESULT_KEYS
    assert results["predict_samples"] == 8
    assert results["checkpoint_dir"] == str(trained_adapter)
    assert results["do_sample"] is False
    assert results["eval_loss"] > 0
    assert 0 <= results["predict_rouge-1"] <= 100
    assert json.loads(completed.stdout) == results


def test_batch_size_keeps_greedy_predictions(tiny_model, tmp_path):
    progress: list[dict] = []

    batched = run_evaluation(quick_args(tmp_path / "batch-4"), on_progress=progress.append)
    single = run_evaluation(quick_args(tmp_path / "batch-1", per_device_eval_batch_size=1))

    samples = read_samples(8)
    prompt_lengths = {len(sample["content"]) for sample in samples[:4]}
    assert len(prompt_lengths) > 1, "the first batch must need padding for this test to mean anything"
    # The random base model emits varied tokens, so any padding leak would change its text.
    batched_texts = [record["predict"] for record in read_predictions(tmp_path / "batch-4")]
    single_texts = [record["predict"] for record in read_predictions(tmp_path / "batch-1")]
    assert batched_texts == single_texts
    assert any(batched_texts), "the base model generated only empty texts"
    assert batched["eval_loss"] == pytest.approx(single["eval_loss"], abs=1e-3)
    # Original: no adapter, the BASE_MODEL setting.
    assert batched["checkpoint_dir"] is None
    assert batched["model_path"] == str(tiny_model)
    assert progress[-1]["samples_done"] == progress[-1]["total_samples"] == 8
    assert [update["samples_done"] for update in progress] == [0, 4, 8]


def test_resume_continues_after_partial_line(trained_adapter, tmp_path):
    output_dir = tmp_path / "resume"
    args = quick_args(output_dir, checkpoint_dir=str(trained_adapter))
    run_evaluation(args)
    complete = read_predictions(output_dir)
    lines = (output_dir / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (output_dir / PREDICTIONS_FILE).write_text("".join(lines[:3]) + lines[3][:25], encoding="utf-8")

    results = run_evaluation(args)

    resumed = read_predictions(output_dir)
    assert len(resumed) == 8
    assert [record["prompt"] for record in resumed] == [record["prompt"] for record in complete]
    assert resumed == complete
    assert results["predict_samples"] == 8


def test_resume_rejects_other_settings(trained_adapter, tmp_path):
    output_dir = tmp_path / "changed"
    run_evaluation(quick_args(output_dir, checkpoint_dir=str(trained_adapter), max_samples=2))

    with pytest.raises(EvaluationSetupError, match="max_new_tokens") as raised:
        run_evaluation(
            quick_args(output_dir, checkpoint_dir=str(trained_adapter), max_samples=2, max_new_tokens=5)
        )

    assert "--output_dir" in str(raised.value)
    assert json.loads((output_dir / SETTINGS_FILE).read_text())["max_new_tokens"] == 12


def test_resume_rejects_other_dataset_rows(tmp_path):
    output_dir = tmp_path / "foreign"
    output_dir.mkdir()
    foreign = {"prompt": "类型#鞋", "predict": "一双鞋", "label": "一双好鞋"}
    (output_dir / PREDICTIONS_FILE).write_text(
        json.dumps(foreign, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    with pytest.raises(EvaluationSetupError, match="line 1"):
        run_evaluation(quick_args(output_dir))


def test_decode_skips_invalid_ids(tiny_model):
    from shared.modeling.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    valid = tokenizer("粉红色连衣裙", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    noisy = [-100, valid[0], len(tokenizer), *valid[1:], 10**9, -1]

    assert decode_prediction(tokenizer, noisy) == "粉红色连衣裙"
    assert decode_prediction(tokenizer, [*valid, eos, *valid], stop_ids=[eos]) == "粉红色连衣裙"
    assert decode_prediction(tokenizer, [-100, -100]) == ""
    assert decode_prediction(tokenizer, []) == ""


def test_sampling_settings_recorded(trained_adapter, tmp_path):
    args = quick_args(
        tmp_path / "sampled",
        checkpoint_dir=str(trained_adapter),
        max_samples=2,
        max_new_tokens=6,
        do_sample=True,
        temperature=0.5,
        top_p=0.9,
        seed=7,
    )

    results = run_evaluation(args)

    assert results["do_sample"] is True
    assert results["temperature"] == 0.5
    assert results["top_p"] == 0.9
    assert results["seed"] == 7
    assert results["max_new_tokens"] == 6
    saved = json.loads((tmp_path / "sampled" / RESULTS_FILE).read_text(encoding="utf-8"))
    assert saved == results


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint_dir", "{tmp}/no-such-adapter"], "no-such-adapter' not found"),
        (["--checkpoint_dir", "{tmp}"], "no adapter_config.json"),
        (["--dataset", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, flags, message):
    argv = [flag.format(tmp=tmp_path) for flag in flags] + ["--output_dir", str(tmp_path / "out")]

    code = main(argv)

    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.startswith("adgen eval: error: ")
    assert message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_full_weights_folder_named_as_adapter(tmp_path, capsys):
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    code = main(["--checkpoint_dir", str(folder), "--output_dir", str(tmp_path / "out")])

    assert code == 2
    assert "--model_name_or_path" in capsys.readouterr().err


def test_adapter_of_other_base_rejected(trained_adapter, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_adapter, adapter)
    record_path = adapter / "adgen_base.json"
    record = json.loads(record_path.read_text())
    record.update(fingerprint="0" * 16, path=str(tmp_path / "deleted-base"))
    record_path.write_text(json.dumps(record))

    with pytest.raises(EvaluationSetupError, match="--model_name_or_path") as raised:
        run_evaluation(quick_args(tmp_path / "out", checkpoint_dir=str(adapter)))

    assert "0" * 16 in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_invalid_base_record_rejected(trained_adapter, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_adapter, adapter)
    (adapter / "adgen_base.json").write_text("{not json")

    with pytest.raises(EvaluationSetupError, match="invalid JSON"):
        run_evaluation(quick_args(tmp_path / "out", checkpoint_dir=str(adapter)))


@pytest.mark.skipif(not ADGEN_DEV.is_file(), reason=f"ADGEN dev split not found at {ADGEN_DEV}")
def test_heldout_dev_lines(trained_adapter, tmp_path):
    data_dir = tmp_path / "registry"
    data_dir.mkdir()
    lines = ADGEN_DEV.read_text(encoding="utf-8").splitlines()
    (data_dir / "heldout.json").write_text("\n".join(lines[-100:]) + "\n", encoding="utf-8")
    columns = {"prompt": "content", "query": "", "response": "summary", "history": ""}
    registry = {"adgen_heldout": {"file_name": "heldout.json", "columns": columns}}
    (data_dir / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    args = quick_args(
        tmp_path / "heldout",
        dataset="adgen_heldout",
        dataset_dir=str(data_dir),
        checkpoint_dir=str(trained_adapter),
        max_samples=None,
        max_new_tokens=16,
        per_device_eval_batch_size=16,
    )

    results = run_evaluation(args)

    predictions = read_predictions(tmp_path / "heldout")
    assert len(predictions) == 100
    assert predictions[-1]["label"] == json.loads(lines[-1])["summary"]
    assert results["predict_samples"] == 100
    assert set(results) >= RESULT_KEYS
