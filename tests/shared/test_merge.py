"""`adgen merge`: merged weights equal base + adapter, the folder reloads alone, bad input is rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.merge import MergeError, main, merge_adapter
from shared.modeling.architectures import BASE_RECORD, base_fingerprint
from shared.modeling.loader import load_model, load_tokenizer
from shared.modeling.template import build_messages, encode_prompt
from tests.conftest import REPO, SOURCE_PREFIX, adgen_command

PROMPTS = ["类型#裙*颜色#粉红色*裙长#连衣裙", "类型#上衣*材质#棉*衣样式#T恤", "😀 稀有字龘"]


@pytest.fixture(scope="module")
def merged_dir(trained_adapter: Path, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("merge") / "merged"
    assert main(["--checkpoint_dir", str(trained_adapter), "--output_dir", str(output_dir)]) == 0
    return output_dir


def _greedy_ids(model, tokenizer, prompt: str) -> list[int]:
    ids = encode_prompt(tokenizer, build_messages(prompt, SOURCE_PREFIX))
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([ids]), max_new_tokens=16, do_sample=False, repetition_penalty=1.3
        )
    return output[0, len(ids) :].tolist()


def test_merged_greedy_output_equals_base_plus_adapter(merged_dir, trained_adapter, tiny_model):
    tokenizer = load_tokenizer(str(trained_adapter))
    with_adapter = load_model(str(tiny_model), adapters=[str(trained_adapter)])
    merged = load_model(str(merged_dir))

    for prompt in PROMPTS:
        assert _greedy_ids(merged, tokenizer, prompt) == _greedy_ids(with_adapter, tokenizer, prompt), prompt


def test_merge_changes_the_base_weights(merged_dir, tiny_model):
    base = load_model(str(tiny_model))
    merged = load_model(str(merged_dir))
    name = "model.layers.0.self_attn.q_proj.weight"
    base_weight = dict(base.named_parameters())[name]
    merged_weight = dict(merged.named_parameters())[name]

    assert not torch.equal(base_weight, merged_weight)


def test_merged_folder_contents_and_record(merged_dir, trained_adapter, tiny_model):
    names = {path.name for path in merged_dir.iterdir()}
    record = json.loads((merged_dir / BASE_RECORD).read_text(encoding="utf-8"))

    assert any(name.endswith(".safetensors") for name in names)
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.startswith("adapter_") for name in names)
    assert record["fingerprint"] == base_fingerprint(str(tiny_model))
    assert record["merged_from"] == str(trained_adapter.resolve())
    assert record["base_model"] == "tiny-glm"
    assert not [entry for entry in merged_dir.parent.iterdir() if entry.name.startswith(".")]


def test_merged_folder_reloads_in_fresh_process(merged_dir):
    script = (
        "import sys, json\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "print(json.dumps({'padding_side': tokenizer.padding_side,"
        " 'eos': model.generation_config.eos_token_id, 'type': type(model).__name__}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(merged_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["padding_side"] == "left"
    assert loaded["type"] == "GlmForCausalLM"
    assert loaded["eos"]


def test_merge_replaces_existing_output(trained_adapter, tmp_path):
    output_dir = tmp_path / "merged"
    output_dir.mkdir()
    (output_dir / "config.json").write_text("{}", encoding="utf-8")
    (output_dir / "stale.txt").write_text("old", encoding="utf-8")

    merge_adapter(trained_adapter, output_dir)

    assert not (output_dir / "stale.txt").exists()
    assert (output_dir / BASE_RECORD).is_file()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["merged"]


def _copy_adapter(trained_adapter: Path, target: Path) -> Path:
    target.mkdir()
    for path in trained_adapter.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)
    return target


def test_merge_rejects_folder_without_adapter_config(trained_adapter, tmp_path):
    adapter = _copy_adapter(trained_adapter, tmp_path / "adapter")
    (adapter / "adapter_config.json").unlink()

    with pytest.raises(MergeError, match="adapter_config.json"):
        merge_adapter(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_rejects_folder_without_lora_weights(trained_adapter, tmp_path):
    adapter = _copy_adapter(trained_adapter, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()

    with pytest.raises(MergeError, match="no LoRA weights"):
        merge_adapter(adapter, tmp_path / "out")


def test_merge_rejects_adapter_of_another_base(trained_adapter, tmp_path):
    adapter = _copy_adapter(trained_adapter, tmp_path / "adapter")
    record = json.loads((adapter / BASE_RECORD).read_text(encoding="utf-8"))
    record["fingerprint"] = "0123456789abcdef"
    (adapter / BASE_RECORD).write_text(json.dumps(record), encoding="utf-8")

    with pytest.raises(MergeError, match="fingerprint 0123456789abcdef"):
        merge_adapter(adapter, tmp_path / "out")


def test_merge_rejects_other_base_without_record(trained_adapter, tiny_model, tmp_path):
    adapter = _copy_adapter(trained_adapter, tmp_path / "adapter")
    (adapter / BASE_RECORD).unlink()
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_model, other_base)
    config = json.loads((other_base / "config.json").read_text(encoding="utf-8"))
    config["rms_norm_eps"] = 1e-5  # Same shapes, so only the fingerprint differs between the bases.
    (other_base / "config.json").write_text(json.dumps(config), encoding="utf-8")

    with pytest.raises(MergeError, match="--model_name_or_path"):
        merge_adapter(adapter, tmp_path / "out", base_model=str(other_base))


def test_merge_refuses_to_replace_a_non_model_folder(trained_adapter, tmp_path):
    output_dir = tmp_path / "documents"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("keep me", encoding="utf-8")

    with pytest.raises(MergeError, match="not a model folder"):
        merge_adapter(trained_adapter, output_dir)
    assert (output_dir / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_merge_cli_exits_2_on_invalid_adapter(tmp_path):
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    result = subprocess.run(
        adgen_command("merge", "--checkpoint_dir", str(empty), "--output_dir", str(tmp_path / "out")),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2
    assert "adapter_config.json" in result.stderr
