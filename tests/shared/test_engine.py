"""The serving engine in-process on the tiny model: batching, detokenization, cancel, capacity, reload."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from shared.hparams import ADGEN_SOURCE_PREFIX
from shared.inference.detokenize import IncrementalDetokenizer
from shared.inference.engine import ContextTooLong, Engine, EngineBusy, ModelNotReady
from shared.inference.params import GenerationParams
from shared.inference.requests import DoneEvent, TokenEvent
from shared.inference.served import LoadTargetError, resolve_load_target, startup_source
from shared.modeling.template import build_messages
from shared.settings import Settings, get_settings
from tests.conftest import REPO, adgen_command, wait_until

PROMPTS = [
    "类型#裙*颜色#粉红色*裙长#连衣裙",
    "类型#上衣*材质#棉*颜色#白色*衣样式#T恤*衣领型#圆领",
    "😀🎉👩‍👩‍👧 类型#裤",
    "稀有字：龘靐𠀋𪚥",
]
LONG = GenerationParams(max_new_tokens=1500, do_sample=False)


@pytest.fixture(scope="module")
def engine(tiny_model: Path):
    engine = Engine(get_settings())
    engine.load(str(tiny_model))
    yield engine
    engine.close()


def collect(handle) -> tuple[list[str], DoneEvent]:
    deltas = []
    for event in handle:
        if isinstance(event, TokenEvent):
            deltas.append(event.text)
        else:
            assert isinstance(event, DoneEvent), event
            return deltas, event
    raise AssertionError("the generation ended without a DoneEvent")


def token_ids(engine: Engine, text: str) -> list[int]:
    assert engine.current is not None
    return engine.current.tokenizer(text, add_special_tokens=False)["input_ids"]


def byte_token(tokenizer, byte: int) -> int:
    """Id of the byte-level token of one raw byte (GPT-2's byte-to-unicode table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for value in range(256):
        if value in printable:
            table[value] = chr(value)
        else:
            table[value] = chr(256 + extra)
            extra += 1
    return tokenizer.convert_tokens_to_ids(table[byte])


def test_detokenizer_holds_back_partial_characters(engine):
    tokenizer = engine.current.tokenizer
    text = "粉红色😀连衣裙🎉龘"
    ids = [byte_token(tokenizer, byte) for byte in text.encode("utf-8")]
    detokenizer = IncrementalDetokenizer(tokenizer)

    deltas = [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]

    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert deltas[0] == deltas[1] == ""  # 粉 is three bytes: nothing until the third.
    assert deltas[2] == "粉"


def test_detokenizer_drops_bytes_that_never_form_a_character(engine):
    tokenizer = engine.current.tokenizer
    ids = [byte_token(tokenizer, 0xE4)] + token_ids(engine, "裙子") + [byte_token(tokenizer, 0xF0)]
    detokenizer = IncrementalDetokenizer(tokenizer)

    deltas = [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]

    assert "".join(deltas) == "裙子"
    assert detokenizer.text == "裙子"


def test_greedy_output_same_alone_batched_and_generate(engine):
    params = GenerationParams(max_new_tokens=24, do_sample=False, repetition_penalty=1.3)
    alone = [collect(engine.submit(prompt, params))[1] for prompt in PROMPTS]
    handles = [engine.submit(prompt, params) for prompt in PROMPTS * 2]
    batched = [collect(handle)[1] for handle in handles]

    served = engine.current
    for prompt, single, in_batch, repeated in zip(
        PROMPTS, alone, batched, batched[len(PROMPTS) :], strict=False
    ):
        ids = served.encode(build_messages(prompt, ADGEN_SOURCE_PREFIX))
        with torch.inference_mode():
            output = served.model.generate(
                torch.tensor([ids], device=served.model.device),
                max_new_tokens=24,
                do_sample=False,
                repetition_penalty=1.3,
            )
        reference = served.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
        assert single.text == in_batch.text == repeated.text
        assert single.text == reference.replace("\ufffd", "")
        assert single.completion_tokens == in_batch.completion_tokens


def test_seeded_sampling_same_alone_and_batched(engine):
    params = GenerationParams(max_new_tokens=32, do_sample=True, temperature=1.5, top_p=0.9, seed=11)
    alone = [collect(engine.submit(prompt, params))[1].text for prompt in PROMPTS]
    handles = [engine.submit(prompt, params) for prompt in PROMPTS]
    batched = [collect(handle)[1].text for handle in handles]

    assert alone == batched
    assert len(set(alone)) > 1


def test_stream_has_no_partial_characters(engine):
    params = GenerationParams(max_new_tokens=64, do_sample=True, temperature=2.0, top_p=1.0, seed=3)
    for prompt in PROMPTS:
        deltas, done = collect(engine.submit(prompt, params))

        assert all(deltas)
        assert not any("\ufffd" in delta for delta in deltas)
        assert "".join(deltas) == done.text
        assert done.completion_tokens <= 64


def test_finish_reasons_and_usage(engine):
    _, done = collect(engine.submit(PROMPTS[0], GenerationParams(max_new_tokens=5, do_sample=False)))

    assert done.finish_reason == "length"
    assert done.completion_tokens == 5
    assert done.prompt_tokens == len(engine.current.encode(build_messages(PROMPTS[0], ADGEN_SOURCE_PREFIX)))
    assert done.model == "tiny-glm"


def test_cancel_stops_generation(engine):
    handle = engine.submit(PROMPTS[0], LONG)
    events = iter(handle)
    assert isinstance(next(events), TokenEvent)

    handle.cancel()
    done = [event for event in events if isinstance(event, DoneEvent)][0]

    assert done.finish_reason == "cancelled"
    assert done.completion_tokens < LONG.max_new_tokens
    wait_until(lambda: engine.status().running == 0, timeout=10, what="the engine to drop the request")


def test_context_limit_is_checked_before_queueing(engine):
    with pytest.raises(ContextTooLong) as raised:
        engine.submit(PROMPTS[0], GenerationParams(max_new_tokens=2040))

    assert raised.value.max_context == 2048
    assert str(raised.value.prompt_tokens) in str(raised.value)
    assert "2040" in str(raised.value)


def test_capacity_rejects_beyond_running_plus_queued(tiny_model, monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "1")
    monkeypatch.setenv("MAX_QUEUED_STREAMS", "1")
    get_settings.cache_clear()
    small = Engine(get_settings())
    small.load(str(tiny_model))
    try:
        running = small.submit(PROMPTS[0], LONG)
        queued = small.submit(PROMPTS[1], LONG)
        with pytest.raises(EngineBusy):
            small.submit(PROMPTS[2], LONG)
        # The scheduler thread admits the first request on its next loop, so wait for it to run.
        wait_until(lambda: small.status().running == 1, timeout=30, what="the first request to run")
        assert small.status().waiting == 1

        queued.cancel()
        running.cancel()
        wait_until(
            lambda: small.status().running + small.status().waiting == 0, timeout=10, what="idle engine"
        )
        _, done = collect(small.submit(PROMPTS[2], GenerationParams(max_new_tokens=3)))
        assert done.completion_tokens == 3
    finally:
        small.close()


def test_submit_before_load_is_not_ready():
    with pytest.raises(ModelNotReady, match="no model is loaded"):
        Engine(get_settings()).submit(PROMPTS[0], GenerationParams())


def test_failed_load_is_reported_and_keeps_serving(engine, tmp_path):
    missing = tmp_path / "missing-model"

    with pytest.raises(OSError):
        engine.load(str(missing))

    status = engine.status()
    assert status.state == "ready"
    assert status.model == "tiny-glm"
    assert str(missing) in status.error
    _, done = collect(engine.submit(PROMPTS[0], GenerationParams(max_new_tokens=2)))
    assert done.model == "tiny-glm"


def test_reload_keeps_running_request_on_old_model(tiny_model, trained_adapter):
    engine = Engine(get_settings())
    engine.load(str(tiny_model))
    try:
        old = engine.submit(PROMPTS[0], LONG)
        old_events = iter(old)
        assert isinstance(next(old_events), TokenEvent)

        engine.load(str(trained_adapter))
        new = engine.submit(PROMPTS[0], GenerationParams(max_new_tokens=8, do_sample=False))
        old.cancel()
        old_done = [event for event in old_events if isinstance(event, DoneEvent)][0]
        _, new_done = collect(new)

        assert old_done.model == "tiny-glm"
        assert new_done.model == trained_adapter.name
        assert engine.status().model == trained_adapter.name
    finally:
        engine.close()


def test_startup_source_prefers_setting_then_newest_merged(tmp_path):
    settings = Settings(volumes_dir=tmp_path, base_model="tiny-glm", served_model="")
    assert startup_source(settings) == "tiny-glm"

    for name in ("older", "newer"):
        folder = settings.merged_dir / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}", encoding="utf-8")
    (settings.merged_dir / ".staging").mkdir()
    assert startup_source(settings) == str(settings.merged_dir / "newer")

    pinned = Settings(volumes_dir=tmp_path, served_model="/models/pinned")
    assert startup_source(pinned) == "/models/pinned"

    by_name = Settings(volumes_dir=tmp_path, served_model="older")
    assert startup_source(by_name) == str(settings.merged_dir / "older")


def test_load_target_must_be_a_model_inside_volumes(tmp_path):
    settings = Settings(volumes_dir=tmp_path / "volumes")
    merged = settings.merged_dir / "m1"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}", encoding="utf-8")

    assert resolve_load_target(None, "m1", settings) == merged.resolve()
    assert resolve_load_target(str(merged), None, settings) == merged.resolve()
    with pytest.raises(LoadTargetError, match="outside VOLUMES_DIR"):
        resolve_load_target(str(tmp_path), None, settings)
    with pytest.raises(LoadTargetError, match="invalid model name"):
        resolve_load_target(None, "../m1", settings)
    with pytest.raises(LoadTargetError, match="not a model"):
        resolve_load_target(str(settings.merged_dir), None, settings)
    with pytest.raises(FileNotFoundError):
        resolve_load_target(None, "missing", settings)


def test_infer_terminal_streams_an_answer(tiny_model):
    result = subprocess.run(
        adgen_command("infer", "--model", str(tiny_model), "--max_new_tokens", "8", "--seed", "1"),
        input="类型#裙*颜色#粉红色\nexit\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Serving tiny-glm" in result.stdout
    answer = result.stdout.split("Assistant: ", 1)[1].split("\n", 1)[0]
    assert answer.strip()
