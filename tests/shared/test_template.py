"""Prompt format and label masking, on the tiny model's tokenizer."""

from __future__ import annotations

import pytest

from shared.data.registry import Example
from shared.modeling.loader import load_tokenizer
from shared.modeling.template import (
    IGNORE_INDEX,
    build_messages,
    encode_example,
    encode_prompt,
    encode_truncated_prompt,
)
from tests.conftest import SOURCE_PREFIX


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def test_prompt_follows_glm4_format(tokenizer):
    ids = encode_prompt(tokenizer, build_messages("类型#裙*颜色#粉红色", SOURCE_PREFIX))

    text = tokenizer.decode(ids)

    assert text == f"[gMASK]<sop><|user|>\n{SOURCE_PREFIX}类型#裙*颜色#粉红色<|assistant|>\n"


def test_system_and_history_turns(tokenizer):
    messages = build_messages("类型#裤", system="你是文案。", history=[("类型#裙", "好裙子。")])

    text = tokenizer.decode(encode_prompt(tokenizer, messages))

    assert (
        text
        == "[gMASK]<sop><|system|>\n你是文案。<|user|>\n类型#裙<|assistant|>\n好裙子。<|user|>\n类型#裤<|assistant|>\n"
    )


def test_labels_cover_response_only(tokenizer):
    example = Example(prompt="类型#裙", response="粉色连衣裙。")

    encoded = encode_example(tokenizer, example, SOURCE_PREFIX, 512, 512)

    prompt_length = len(encode_prompt(tokenizer, build_messages("类型#裙", SOURCE_PREFIX)))
    assert encoded.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert encoded.labels[prompt_length:] == encoded.input_ids[prompt_length:]
    assert encoded.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.labels[prompt_length:-1]) == "粉色连衣裙。"
    assert not encoded.truncated


@pytest.mark.parametrize("max_length", [60, 12])
def test_long_prompt_truncated_keeps_assistant_start(tokenizer, max_length):
    long_prompt = "类型#裙*" + "颜色#粉红色*" * 100

    ids, truncated = encode_truncated_prompt(tokenizer, long_prompt, max_length, SOURCE_PREFIX)

    assert truncated
    assert len(ids) <= max_length
    assert tokenizer.decode(ids).startswith("[gMASK]<sop><|user|>")
    assert tokenizer.decode(ids).endswith("<|assistant|>\n")


def test_long_response_truncated_ends_with_eos(tokenizer):
    example = Example(prompt="类型#裙", response="好看的裙子。" * 50)

    encoded = encode_example(tokenizer, example, None, 512, 10)

    response = [label for label in encoded.labels if label != IGNORE_INDEX]
    assert len(response) == 10
    assert response[-1] == tokenizer.eos_token_id
    assert encoded.truncated
