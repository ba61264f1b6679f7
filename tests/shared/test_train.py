"""`adgen train`: the original flags, LoRA and full fine-tuning, outputs, resume and bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shared.hparams import TrainArgs
from shared.train.workflow import TrainingSetupError, run_training
from tests.conftest import ADGEN_DEV, SOURCE_PREFIX, adgen_command


def quick_args(output_dir: Path, **overrides) -> TrainArgs:
    values = {
        "dataset": "adgen_sample",
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_steps": 4,
        "save_steps": 2,
        "logging_steps": 1,
        "lora_rank": 4,
        "disable_tqdm": True,
        "source_prefix": SOURCE_PREFIX,
    }
    return TrainArgs(**(values | overrides))


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trainer_log.jsonl").read_text().splitlines()]


def test_lora_changes_adapter_not_base(trained_adapter, tiny_model):
    from peft import PeftModel

    from shared.modeling.loader import load_model

    adapter = load_file(trained_adapter / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    base = load_model(str(tiny_model))
    base_state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    combined = PeftModel.from_pretrained(load_model(str(tiny_model)), str(trained_adapter))

    assert lora_b, "the adapter file holds no lora_B weights"
    assert all(name.count("lora_") == 1 for name in adapter), "only LoRA weights are saved"
    # LoRA initialises B to zero, so a non-zero B proves the adapter was trained.
    assert any(tensor.abs().sum() > 0 for tensor in lora_b)
    for name, tensor in combined.get_base_model().state_dict().items():
        original = name.replace(".base_layer", "")
        if "lora_" in name:
            continue
        assert torch.equal(tensor, base_state[original]), f"base weight {original} changed"


def test_output_folder_has_everything(tmp_path):
    output_dir = tmp_path / "adgen_lora"

    metrics = run_training(quick_args(output_dir, plot_loss=True))

    for name in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "trainer_log.jsonl",
        "training_loss.png",
        "all_results.json",
        "adgen_base.json",
        "checkpoint-2",
        "checkpoint-4",
    ]:
        assert (output_dir / name).exists(), f"{name} missing from the output folder"
    log = read_log(output_dir)
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    assert set(log[0]) == {
        "step",
        "total_steps",
        "loss",
        "learning_rate",
        "epoch",
        "elapsed_seconds",
        "remaining_seconds",
    }
    assert json.loads((output_dir / "all_results.json").read_text())["train_loss"] == pytest.approx(
        metrics["train_loss"]
    )
    assert json.loads((output_dir / "tokenizer_config.json").read_text())["padding_side"] == "left"
    assert json.loads((output_dir / "adgen_base.json").read_text())["fingerprint"]


def test_resume_continues_at_checkpoint_step(tmp_path):
    import shutil

    output_dir = tmp_path / "resumable"
    run_training(quick_args(output_dir, max_steps=6))
    # Pretend the run died after its first checkpoint, while writing a later one.
    shutil.rmtree(output_dir / "checkpoint-4")
    (output_dir / "checkpoint-6" / "trainer_state.json").unlink()
    (output_dir / "trainer_log.jsonl").unlink()

    run_training(quick_args(output_dir, max_steps=6))

    steps = [row["step"] for row in read_log(output_dir)]
    assert steps == [3, 4, 5, 6]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_overwrite_output_dir_starts_from_zero(tmp_path):
    output_dir = tmp_path / "again"
    run_training(quick_args(output_dir, max_steps=2))

    run_training(quick_args(output_dir, max_steps=2, overwrite_output_dir=True))

    assert [row["step"] for row in read_log(output_dir)] == [1, 2]


def test_unknown_lora_target_rejected(tmp_path):
    with pytest.raises(TrainingSetupError) as caught:
        run_training(quick_args(tmp_path / "bad", lora_target="q_proj,query_key_value"))

    message = str(caught.value)
    assert "query_key_value" in message
    for name in ["down_proj", "gate_up_proj", "k_proj", "o_proj", "q_proj", "v_proj"]:
        assert name in message
    assert not (tmp_path / "bad" / "adapter_model.safetensors").exists()


def test_fp16_on_cpu_falls_back_with_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="shared.train.workflow"):
        run_training(quick_args(tmp_path / "fp16", fp16=True, max_steps=1))

    warnings = [record.getMessage() for record in caplog.records if "--fp16" in record.getMessage()]
    assert len(warnings) == 1
    assert "float32" in warnings[0]


def test_full_finetuning_saves_full_weights(tmp_path, tiny_model):
    output_dir = tmp_path / "full"

    run_training(quick_args(output_dir, finetuning_type="full", max_steps=2, learning_rate=1e-2))

    assert (output_dir / "model.safetensors").is_file()
    assert not (output_dir / "adapter_config.json").exists()
    tuned = load_file(output_dir / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned[name], base[name])


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(adgen_command("train", *args), capture_output=True, text=True, check=check)


def test_cli_rejects_unknown_lora_target_listing_names(tmp_path):
    result = run_cli(
        "--dataset", "adgen_sample", "--output_dir", str(tmp_path / "x"), "--lora_target", "c_attn"
    )

    assert result.returncode == 2
    assert "--lora_target c_attn not found in GlmForCausalLM" in result.stderr
    assert "its linear layers are: down_proj, gate_up_proj, k_proj, o_proj, q_proj, v_proj" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--learning_rate", "-1", "--learning_rate: Input should be greater than 0"),
        ("--finetuning_type", "ptuning", "invalid choice: 'ptuning'"),
        ("--fp16", "maybe", "expected a boolean (true/false), got 'maybe'"),
    ],
)
def test_cli_rejects_invalid_flag_values(tmp_path, flag, value, message):
    result = run_cli("--output_dir", str(tmp_path / "x"), flag, value)

    assert result.returncode == 2
    assert message in result.stderr


def test_cli_unknown_dataset_lists_registered(tmp_path):
    result = run_cli("--dataset", "adgen_tran", "--output_dir", str(tmp_path / "x"))

    assert result.returncode == 2
    assert "unknown dataset 'adgen_tran'" in result.stderr
    assert "adgen_sample" in result.stderr


@pytest.mark.skipif(not ADGEN_DEV.is_file(), reason=f"real ADGEN dev split not found at {ADGEN_DEV}")
def test_original_command_on_real_dev_split(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    columns = {"prompt": "content", "query": "", "response": "summary", "history": ""}
    info = {"adgen_train": {"file_name": str(ADGEN_DEV), "columns": columns}}
    (registry / "dataset_info.json").write_text(json.dumps(info))
    output_dir = tmp_path / "adgen_lora"
    model_dir = tmp_path / "tiny-glm"
    # As on a machine after `make data`: the tokenizer learns from the training texts.
    subprocess.run(
        adgen_command("build-tiny-model", "--dataset_dir", str(registry), "--output_dir", str(model_dir)),
        capture_output=True,
        check=True,
    )

    # The published ADGEN command, with --max_steps 60 and --dataset_dir added.
    run_cli(
        "--do_train", "--dataset", "adgen_train", "--dataset_dir", str(registry),
        "--finetuning_type", "lora", "--output_dir", str(output_dir), "--overwrite_cache",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--lr_scheduler_type", "cosine", "--logging_steps", "10", "--save_steps", "2000",
        "--learning_rate", "1e-3", "--num_train_epochs", "2.0", "--lora_rank", "32",
        "--ddp_find_unused_parameters", "False", "--source_prefix", SOURCE_PREFIX,
        "--plot_loss", "--fp16", "--max_steps", "60", "--model_name_or_path", str(model_dir),
        check=True,
    )  # fmt: skip

    log = read_log(output_dir)
    assert [row["step"] for row in log] == [10, 20, 30, 40, 50, 60]
    assert log[-1]["loss"] < log[0]["loss"]
    assert (output_dir / "training_loss.png").is_file()
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == 32


def test_accelerate_launch_two_processes(tmp_path):
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "shared.cli", "train", "--dataset", "adgen_sample", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--max_steps", "4", "--save_steps", "2",
        "--logging_steps", "1", "--lora_rank", "4", "--ddp_find_unused_parameters", "False",
    ]  # fmt: skip

    subprocess.run(command, capture_output=True, text=True, check=True)

    state = json.loads((output_dir / "trainer_state.json").read_text())
    samples = 56  # Lines of data/adgen_sample.json.
    # Two processes of batch 2 consume 4 samples per step; one process would consume 2.
    assert state["epoch"] == pytest.approx(4 * 4 / samples, abs=0.01)
    assert len(read_log(output_dir)) == 4, "only the main process writes trainer_log.jsonl"
