"""The embedded tiny model: built with save_pretrained, reloaded like real weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from shared.modeling.tiny import STOP_TOKENS, build_tiny_model


def test_tiny_model_reloads_through_auto_classes(tiny_model):
    script = (
        "import sys, json\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(json.dumps({'class': type(model).__name__, 'padding': tokenizer.padding_side,"
        " 'params': sum(p.numel() for p in model.parameters())}))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script, str(tiny_model)], capture_output=True, text=True, check=True
    ).stdout

    loaded = json.loads(output.strip().splitlines()[-1])
    assert loaded["class"] == "GlmForCausalLM"
    assert loaded["padding"] == "left"
    assert 1_000_000 < loaded["params"] < 20_000_000


def test_tiny_tokenizer_round_trips_any_text(tiny_model):
    from shared.modeling.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    text = "类型#裙*颜色#粉红色 😀 ABC-123 龘𠀀 <UNK>"

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_tiny_model_stops_on_glm_tokens(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    tokenizer_config = json.loads((tiny_model / "tokenizer_config.json").read_text())

    from shared.modeling.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids(STOP_TOKENS)
    assert tokenizer_config["padding_side"] == "left"


@pytest.mark.parametrize(("variant", "model_class"), [("glm4", "Glm4ForCausalLM")])
def test_glm4_variant_builds_and_runs(tmp_path, variant, model_class):
    from shared.modeling.loader import load_model, load_tokenizer

    folder = build_tiny_model(
        tmp_path / "tiny", ["类型#裙*颜色#红色", "红色的连衣裙，优雅大方。"] * 20, variant
    )
    model = load_model(str(folder))
    tokenizer = load_tokenizer(str(folder))

    with torch.no_grad():
        logits = model(**tokenizer(["类型#裙"], return_tensors="pt")).logits

    assert type(model).__name__ == model_class
    assert logits.shape[-1] == len(tokenizer)
