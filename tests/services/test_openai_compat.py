"""The OpenAI-compatible routes, driven by the official `openai` client against `adgen serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.services.conftest_inference import ApiProcess, parse_sse, served_model_id, shared_inference_api

TAGS = "类型#裙*颜色#粉红色*图案#条纹*裙长#连衣裙 😀"


@pytest.fixture(scope="module")
def api(request, tiny_model: Path) -> ApiProcess:
    return shared_inference_api(request, tiny_model)


@pytest.fixture(scope="module")
def client(api) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=120)


def test_models_list_shows_served_model(client, api):
    models = client.models.list()

    assert models.data[0].id == served_model_id(api)
    assert models.data[0].object == "model"


def test_streamed_completion_equals_non_streamed(client, api):
    model = served_model_id(api)
    messages = [{"role": "user", "content": TAGS}]
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        max_tokens=24,
        temperature=0,
        extra_body={"repetition_penalty": 1.3},
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    usage = chunks[-1].usage

    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, extra_body={"repetition_penalty": 1.3}
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_reasons[-1] in {"stop", "length"}
    assert not [delta for delta in deltas if "\ufffd" in delta]
    assert "".join(deltas) == whole.choices[0].message.content
    assert whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert whole.model == model


def test_chat_completion_matches_generate(client, api):
    model = served_model_id(api)
    whole = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": TAGS}], max_tokens=16, temperature=0
    )
    generated = httpx.post(
        f"{api.url}/generate",
        json={"content": TAGS, "max_new_tokens": 16, "do_sample": False, "stream": False},
        timeout=60,
    ).json()

    assert whole.choices[0].message.content == generated["text"]
    assert whole.usage.prompt_tokens == generated["usage"]["prompt_tokens"]


def test_stream_ends_with_done_marker(api):
    body = {
        "model": served_model_id(api),
        "messages": [{"role": "user", "content": TAGS}],
        "stream": True,
        "max_tokens": 4,
    }
    with httpx.stream("POST", f"{api.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = list(parse_sse(response.iter_lines()))

    assert events[-1] == ("message", "[DONE]")
    assert all(data["object"] == "chat.completion.chunk" for _, data in events[:-1])


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError, match="is not served"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": TAGS}])


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"stop": ["。"]}, "stop"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ],
)
def test_invalid_arguments_are_rejected(client, api, arguments, field):
    request = {"model": served_model_id(api), "messages": [{"role": "user", "content": TAGS}], **arguments}

    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(**request)

    body: Any = raised.value.body
    assert field in [error["loc"][1] for error in body["detail"]]


def test_messages_split_into_system_history_and_prompt():
    from services.api.schemas_generation import ChatCompletionRequest

    request = ChatCompletionRequest(
        model="m",
        messages=[
            {"role": "system", "content": "写广告"},
            {"role": "user", "content": "类型#裙"},
            {"role": "assistant", "content": "一条裙子。"},
            {"role": "user", "content": "颜色#白色"},
            {"role": "user", "content": [{"type": "text", "text": "裙长#连衣裙"}]},
        ],
    )

    assert request.conversation() == ("写广告", [("类型#裙", "一条裙子。")], "颜色#白色\n裙长#连衣裙")
