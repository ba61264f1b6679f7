"""POST /generate, probes, metrics, hot reload, API key and capacity, over HTTP against `adgen serve`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from shared.jobs.constants import MODEL_RELOAD_CHANNEL
from tests.conftest import SOURCE_PREFIX, free_port, wait_until
from tests.services.conftest_inference import (
    ApiProcess,
    launch_inference_api,
    parse_sse,
    served_model_id,
    shared_inference_api,
)

PROMPTS = [
    "类型#裙*颜色#粉红色*裙长#连衣裙",
    "😀🎉👩‍👩‍👧 类型#上衣*颜色#白色",
    "稀有字：龘靐𠀋𪚥 图案#条纹",
    "🧧🐉",
]
API_KEY = "test-secret-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG_STREAM: dict[str, Any] = {"content": PROMPTS[0], "max_new_tokens": 1900, "do_sample": False}


@pytest.fixture(scope="module")
def api(request, tiny_model: Path) -> ApiProcess:
    return shared_inference_api(request, tiny_model)


@pytest.fixture(scope="module")
def restricted_api(tiny_model: Path, tmp_path_factory) -> Iterator[ApiProcess]:
    """One generation slot, no queue, an API key, and a Redis address where nothing listens."""
    env = {
        "MAX_CONCURRENT_STREAMS": "1",
        "MAX_QUEUED_STREAMS": "0",
        "API_KEY": API_KEY,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SERVED_MODEL": str(tiny_model),
    }
    server = launch_inference_api(tmp_path_factory.mktemp("restricted-api"), env, headers=AUTH)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unloadable_api(tmp_path_factory) -> Iterator[ApiProcess]:
    """An API whose start-up model does not exist, so no model ever loads."""
    env = {"SERVED_MODEL": "/no/such/model", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    server = launch_inference_api(tmp_path_factory.mktemp("unloadable-api"), env, wait_for_model=False)
    yield server
    server.stop()


def stream_events(api: ApiProcess, body: dict, headers: dict | None = None) -> list[tuple[str, Any]]:
    with httpx.stream("POST", f"{api.url}/generate", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        return list(parse_sse(response.iter_lines()))


def next_event_name(lines) -> str:
    """Read an open stream up to its next event line and return the event's name.

    The caller keeps `lines` referenced: a line iterator that is garbage-collected closes the
    connection, which the server treats as a disconnect.
    """
    return next(line for line in lines if line.startswith("event:")).removeprefix("event:").strip()


def generate_whole(api: ApiProcess, body: dict) -> dict:
    response = httpx.post(f"{api.url}/generate", json={**body, "stream": False}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def metric(api: ApiProcess, name: str, headers: dict | None = None, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    text = httpx.get(f"{api.url}/metrics", headers=headers, timeout=10).text
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.mark.parametrize("prompt", PROMPTS)
def test_stream_deltas_join_to_non_streamed_text(api, prompt):
    body = {"content": prompt, "max_new_tokens": 48, "temperature": 1.5, "top_p": 1.0, "seed": 7}
    events = stream_events(api, body)
    names = [name for name, _ in events]
    deltas = [data["text"] for name, data in events if name == "token"]
    done = events[-1][1]

    assert names[-1] == "done"
    assert set(names[:-1]) == {"token"}
    assert all(deltas)
    assert not [delta for delta in deltas if "\ufffd" in delta]
    assert "".join(deltas) == done["text"]
    assert done["finish_reason"] in {"stop", "length"}
    assert 1 <= done["usage"]["completion_tokens"] <= 48
    assert done["usage"]["prompt_tokens"] > 0

    whole = generate_whole(api, body)
    assert whole["text"] == done["text"]
    assert whole["usage"] == done["usage"]
    assert whole["model"] == served_model_id(api)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   "}, "content"),
        ({}, "content"),
        ({"content": "类型#裙", "max_new_tokens": 0}, "max_new_tokens"),
        ({"content": "类型#裙", "max_new_tokens": 2049}, "max_new_tokens"),
        ({"content": "类型#裙", "temperature": 0}, "temperature"),
        ({"content": "类型#裙", "temperature": 2.5}, "temperature"),
        ({"content": "类型#裙", "top_p": 0}, "top_p"),
        ({"content": "类型#裙", "top_p": 1.2}, "top_p"),
        ({"content": "类型#裙", "max_tokens": 10}, "max_tokens"),
    ],
)
def test_invalid_request_is_422_naming_field(api, body, field):
    response = httpx.post(f"{api.url}/generate", json=body, timeout=30)

    assert response.status_code == 422
    assert field in [error["loc"][-1] for error in response.json()["detail"]]


def test_context_overflow_is_400_naming_both_numbers(api, tiny_model):
    from shared.modeling.loader import load_tokenizer
    from shared.modeling.template import build_messages, encode_prompt

    content = "类型#裙*颜色#粉红色" * 20
    prompt_tokens = len(
        encode_prompt(load_tokenizer(str(tiny_model)), build_messages(content, SOURCE_PREFIX))
    )
    response = httpx.post(
        f"{api.url}/generate", json={"content": content, "max_new_tokens": 2048}, timeout=30
    )

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert f"{prompt_tokens} tokens" in detail
    assert "max_new_tokens is 2048" in detail
    assert "2048 tokens" in detail


def test_dropped_connection_cancels_generation(api):
    cancelled_before = metric(
        api, "adgen_generations_finished_total", route="generate", finish_reason="cancelled"
    )
    tokens_before = metric(api, "adgen_generated_tokens_total", route="generate")

    with httpx.stream("POST", f"{api.url}/generate", json=LONG_STREAM, timeout=60) as response:
        lines = response.iter_lines()
        assert next_event_name(lines) == "token"

    def cancelled() -> bool:
        count = metric(api, "adgen_generations_finished_total", route="generate", finish_reason="cancelled")
        return count == cancelled_before + 1

    wait_until(cancelled, timeout=60, what="the dropped stream to be cancelled")
    assert metric(api, "adgen_generations_running") == 0
    generated = metric(api, "adgen_generated_tokens_total", route="generate") - tokens_before
    assert 1 <= generated < LONG_STREAM["max_new_tokens"]


def test_metrics_record_requests_and_tokens(api):
    stream_events(api, {"content": PROMPTS[0], "max_new_tokens": 6, "do_sample": False})
    response = httpx.get(f"{api.url}/metrics", timeout=10)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert metric(api, "adgen_generation_requests_total", route="generate", status="200") >= 1
    assert metric(api, "adgen_time_to_first_token_seconds_count", route="generate") >= 1
    assert metric(api, "adgen_generated_tokens_total", route="generate") >= 6
    assert metric(api, "adgen_generation_tokens_per_second_count", route="generate") >= 1
    assert metric(api, "adgen_model_ready") == 1


def test_health_and_readiness(api):
    health = httpx.get(f"{api.url}/healthz", timeout=10)
    ready = httpx.get(f"{api.url}/readyz", timeout=10)

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": served_model_id(api)}


def test_model_load_rejects_bad_targets(api, session_volumes):
    cases = [
        ({"name": "no-such-model"}, 404),
        ({"path": "/etc"}, 400),
        ({"path": str(session_volumes)}, 400),
        ({}, 422),
        ({"path": "/etc", "name": "x"}, 422),
    ]
    for body, expected in cases:
        response = httpx.post(f"{api.url}/v1/models/load", json=body, timeout=10)
        assert response.status_code == expected, (body, response.text)


def test_hot_reload_by_request_and_redis_channel(api, trained_adapter, session_volumes, tiny_model):
    from shared.merge import merge_adapter

    name = "generate-test-merged"
    merge_adapter(trained_adapter, session_volumes / "merged" / name)
    greedy = {"content": PROMPTS[0], "max_new_tokens": 16, "do_sample": False, "repetition_penalty": 1.3}
    base_id = served_model_id(api)
    base_text = generate_whole(api, greedy)["text"]
    cards = httpx.get(f"{api.url}/v1/models", timeout=10).json()["data"]
    assert {"id": name, "status": "available"}.items() <= next(c for c in cards if c["id"] == name).items()

    long_greedy = {"content": PROMPTS[1], "max_new_tokens": 400, "do_sample": False}
    with httpx.stream("POST", f"{api.url}/generate", json=long_greedy, timeout=120) as in_flight:
        lines = in_flight.iter_lines()
        assert next_event_name(lines) == "token"
        response = httpx.post(f"{api.url}/v1/models/load", json={"name": name}, timeout=10)
        assert response.status_code == 202
        assert response.json()["status"] == "loading"
        wait_until(lambda: served_model_id(api) == name, timeout=90, what=f"the API to serve {name}")
        rest = list(parse_sse(lines))
    assert rest[-1][0] == "done"
    assert rest[-1][1]["model"] == base_id

    merged = generate_whole(api, greedy)
    assert merged["model"] == name
    assert merged["text"] != base_text

    message = json.dumps({"path": str(tiny_model), "name": "tiny-glm"})
    assert Redis.from_url(api.env["REDIS_URL"]).publish(MODEL_RELOAD_CHANNEL, message) == 1
    wait_until(lambda: served_model_id(api) == "tiny-glm", timeout=90, what="the API to serve tiny-glm again")
    assert generate_whole(api, greedy)["text"] == base_text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/generate", {"content": "类型#裙", "max_new_tokens": 2}),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "tiny-glm", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("GET", "/v1/models", None),
        ("POST", "/v1/models/load", {"name": "tiny-glm"}),
    ],
)
def test_api_key_required_on_generation_routes(restricted_api, method, path, body):
    url = f"{restricted_api.url}{path}"
    missing = httpx.request(method, url, json=body, timeout=10)
    wrong = httpx.request(method, url, json=body, headers={"Authorization": "Bearer nope"}, timeout=10)

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"


def test_open_routes_need_no_key(restricted_api):
    for path in ("/", "/healthz", "/metrics", "/static/app.js"):
        assert httpx.get(f"{restricted_api.url}{path}", timeout=10).status_code == 200, path


def test_readyz_names_unreachable_redis(restricted_api):
    ready = httpx.get(f"{restricted_api.url}/readyz", timeout=30)

    assert ready.status_code == 503
    problems = ready.json()["problems"]
    assert "Redis is unreachable" in problems["redis"]
    assert "model" not in problems


def test_capacity_exceeded_is_429_with_retry_after(restricted_api):
    url = restricted_api.url
    with httpx.stream("POST", f"{url}/generate", json=LONG_STREAM, headers=AUTH, timeout=60) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        assert next_event_name(lines) == "token"
        second = httpx.post(f"{url}/generate", json={"content": "类型#裤"}, headers=AUTH, timeout=10)
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "tiny-glm", "messages": [{"role": "user", "content": "类型#裤"}]},
            headers=AUTH,
            timeout=10,
        )

    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert "capacity" in second.json()["detail"]
    assert chat.status_code == 429
    assert chat.json()["error"]["type"] == "rate_limit_error"

    wait_until(
        lambda: metric(restricted_api, "adgen_generations_running") == 0, timeout=60, what="a free slot"
    )
    after = httpx.post(
        f"{url}/generate",
        json={"content": "类型#裤", "max_new_tokens": 3, "stream": False},
        headers=AUTH,
        timeout=60,
    )
    assert after.status_code == 200
    assert after.json()["usage"]["completion_tokens"] == 3


def test_no_model_is_503_before_any_stream(unloadable_api):
    url = unloadable_api.url

    def load_failed() -> dict | None:
        problems = httpx.get(f"{url}/readyz", timeout=30).json().get("problems", {})
        return problems if "failed" in problems.get("model", "") else None

    problems = wait_until(load_failed, timeout=90, what="the start-up load to fail")
    generate = httpx.post(f"{url}/generate", json={"content": "类型#裙"}, timeout=10)
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "tiny-glm", "messages": [{"role": "user", "content": "类型#裙"}]},
        timeout=10,
    )

    assert "/no/such/model" in problems["model"]
    assert generate.status_code == 503
    assert generate.json()["detail"] == (
        "no model is loaded: loading /no/such/model failed: model folder /no/such/model not found"
    )
    assert chat.status_code == 503
    assert "no model is loaded" in chat.json()["error"]["message"]
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
