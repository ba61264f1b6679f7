"""Streaming overhead: POST /generate over HTTP against `model.generate` with a TextIteratorStreamer.

A third side, the serving engine called in this process without HTTP, splits the API's cost into
the engine's share and the share of HTTP and server-sent events. All sides decode greedily on the
same weights, prompt and template, and generate exactly the same number of tokens. The prompts
are those whose greedy answer on the API runs to `max_new_tokens` without a stop token. The plain
side also passes `min_new_tokens = max_new_tokens`, which changes no greedy token when no stop
token would win anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.http_client import REQUEST_TIMEOUT_SECONDS, StreamRun, run_concurrent_streams, stream_generate
from benchmarks.report import TITLES, Section
from benchmarks.stats import median, paired_ratio
from shared.hparams import ADGEN_SOURCE_PREFIX

logger = logging.getLogger(__name__)

TARGET = 0.9  # The API keeps at least 90% of the plain tokens per second.
API, ENGINE, PLAIN = "api", "engine", "plain"


@dataclass
class PlainModel:
    """The served model's folder loaded in this process, on the device and dtype the API uses."""

    model: Any
    tokenizer: Any
    device: Any

    @classmethod
    def load(cls, path: Path) -> PlainModel:
        from shared.inference.served import serving_device
        from shared.modeling.loader import load_model, load_tokenizer

        device, dtype = serving_device()
        model = load_model(str(path)).to(device=device, dtype=dtype).eval()
        return cls(model=model, tokenizer=load_tokenizer(str(path)), device=device)

    def stream(self, prompt: str, max_new_tokens: int) -> StreamRun:
        """Generate `max_new_tokens` tokens greedily through a TextIteratorStreamer and time it."""
        import torch
        from transformers import TextIteratorStreamer

        from shared.modeling.template import build_messages, encode_prompt

        prompt_ids = encode_prompt(self.tokenizer, build_messages(prompt, ADGEN_SOURCE_PREFIX))
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=REQUEST_TIMEOUT_SECONDS
        )
        outputs: list[Any] = []
        failures: list[BaseException] = []
        started = time.perf_counter()
        input_ids = torch.tensor([prompt_ids], device=self.device)

        def generate() -> None:
            try:
                with torch.inference_mode():
                    outputs.append(
                        self.model.generate(
                            input_ids=input_ids,
                            attention_mask=torch.ones_like(input_ids),
                            max_new_tokens=max_new_tokens,
                            min_new_tokens=max_new_tokens,
                            do_sample=False,
                            streamer=streamer,
                        )
                    )
            except BaseException as error:  # Re-raised on the calling thread below.
                failures.append(error)
                streamer.end()  # Ends the iteration below instead of waiting for its timeout.

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        first_text = None
        pieces = []
        for piece in streamer:
            if piece and first_text is None:
                first_text = time.perf_counter() - started
            pieces.append(piece)
        thread.join()
        seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"model.generate failed: {failures[0]}") from failures[0]
        return StreamRun(
            tokens=int(outputs[0].shape[1]) - len(prompt_ids),
            seconds=seconds,
            first_text_seconds=first_text,
            text="".join(pieces),
            finish_reason="length",
        )


def engine_stream(engine, prompt: str, max_new_tokens: int) -> StreamRun:
    """Stream one greedy generation from an in-process `Engine`, without HTTP, and time it."""
    from shared.inference.params import GenerationParams
    from shared.inference.requests import DoneEvent, TokenEvent

    started = time.perf_counter()
    first_text = None
    handle = engine.submit(prompt, GenerationParams(max_new_tokens=max_new_tokens, do_sample=False))
    for event in handle:
        if isinstance(event, TokenEvent) and first_text is None:
            first_text = time.perf_counter() - started
        elif isinstance(event, DoneEvent):
            return StreamRun(
                tokens=event.completion_tokens,
                seconds=time.perf_counter() - started,
                first_text_seconds=first_text,
                text=event.text,
                finish_reason=event.finish_reason,
            )
    raise RuntimeError(f"engine generation failed: {event}")


def select_prompts(base_url: str, candidates: list[str], max_new_tokens: int, count: int) -> list[str]:
    """Return `count` prompts whose greedy answer on the API runs to `max_new_tokens` tokens.

    The candidates go to the API eight at a time, which also warms it up.
    """
    chosen: list[str] = []
    for start in range(0, len(candidates), 8):
        group = candidates[start : start + 8]
        runs, _ = run_concurrent_streams(base_url, group, max_new_tokens)
        chosen += [
            prompt
            for prompt, run in zip(group, runs, strict=True)
            if run.finish_reason == "length" and run.tokens == max_new_tokens
        ]
        if len(chosen) >= count:
            return chosen[:count]
    raise RuntimeError(
        f"only {len(chosen)} of {len(candidates)} prompts run to {max_new_tokens} tokens without a stop "
        f"token; {count} are needed (lower the number of new tokens)"
    )


def _summary_row(name: str, runs: list[StreamRun]) -> list[Any]:
    first_texts = [run.first_text_seconds for run in runs if run.first_text_seconds is not None]
    return [
        name,
        len(runs),
        runs[0].tokens,
        median([run.tokens_per_second for run in runs]),
        median(first_texts) * 1000 if first_texts else None,
        median([run.seconds for run in runs]),
    ]


def _order(round_index: int) -> tuple[str, ...]:
    """Rotate the three sides, so that each runs first, second and third equally often."""
    sides = (PLAIN, ENGINE, API)
    shift = round_index % len(sides)
    return sides[shift:] + sides[:shift]


def _explain_miss(api_vs_plain: float, engine_vs_plain: float, api_vs_engine: float) -> str:
    """Say which layer loses the throughput: the engine itself, or HTTP and server-sent events."""
    from benchmarks.machine import usable_cores

    lost_to_engine = 1 - engine_vs_plain
    lost_to_http = engine_vs_plain - api_vs_plain
    layer = "the engine's decode loop" if lost_to_engine >= lost_to_http else "HTTP and server-sent events"
    return (
        f"Without HTTP the engine keeps {engine_vs_plain:.0%} of the plain rate, and HTTP with "
        f"server-sent events keeps {api_vs_engine:.0%} of the engine's, so most of the loss is in {layer}. "
        f"The API's event loop, its decode thread and the benchmark's HTTP client share {usable_cores()} cores."
    )


def measure_streaming(
    base_url: str, plain: PlainModel, engine, prompts: list[str], max_new_tokens: int, rounds: int
) -> Section:
    """Rotate plain, in-process engine and API runs of each prompt for `rounds` rounds."""
    runs: dict[str, list[StreamRun]] = {API: [], ENGINE: [], PLAIN: []}
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        runners = {
            API: lambda prompt: stream_generate(client, prompt, max_new_tokens),
            ENGINE: lambda prompt: engine_stream(engine, prompt, max_new_tokens),
            PLAIN: lambda prompt: plain.stream(prompt, max_new_tokens),
        }
        for runner in runners.values():
            runner(prompts[0])  # Warm-up.
        for round_index in range(rounds):
            for prompt_index, prompt in enumerate(prompts):
                for side in _order(round_index + prompt_index):
                    runs[side].append(runners[side](prompt))
    for side, side_runs in runs.items():
        wrong = [run.tokens for run in side_runs if run.tokens != max_new_tokens]
        if wrong:
            raise RuntimeError(f"{side} runs generated {wrong} tokens instead of {max_new_tokens}")

    rates = {side: [run.tokens_per_second for run in side_runs] for side, side_runs in runs.items()}
    ratio = paired_ratio(rates[API], rates[PLAIN])
    engine_vs_plain = paired_ratio(rates[ENGINE], rates[PLAIN])
    api_vs_engine = paired_ratio(rates[API], rates[ENGINE])
    per_token_overhead_ms = (1 / median(rates[API]) - 1 / median(rates[PLAIN])) * 1000
    same_text = sum(
        api.text == plain_run.text.replace("\ufffd", "")
        for api, plain_run in zip(runs[API], runs[PLAIN], strict=True)
    )
    section = Section(
        key="streaming",
        title=TITLES["streaming"],
        measured="Tokens per second and time to first text of `POST /generate` (server-sent events, "
        "greedy), timed at an HTTP client against the uvicorn subprocess of the local stack.",
        baseline="`model.generate` with a `TextIteratorStreamer` in the benchmark's process, on the same "
        "weights, device, prompt, chat template and number of new tokens.",
        settings={
            "prompts": len(prompts),
            "rounds": rounds,
            "new tokens per run": max_new_tokens,
            "decoding": "greedy",
        },
        columns=[
            "side",
            "runs",
            "tokens per run",
            "tokens/s (median)",
            "first text ms (median)",
            "s per run",
        ],
        rows=[
            _summary_row("API /generate (HTTP, SSE)", runs[API]),
            _summary_row("engine in-process, no HTTP (diagnostic)", runs[ENGINE]),
            _summary_row("plain generate (baseline)", runs[PLAIN]),
        ],
        ratio=ratio,
        ratio_name="API tokens/s ÷ plain tokens/s, median of paired runs",
        target=TARGET,
        notes=[
            f"Engine without HTTP ÷ plain: {engine_vs_plain:.2f}×; API ÷ engine without HTTP: "
            f"{api_vs_engine:.2f}× (medians of paired runs).",
            f"Per token, the API takes {abs(per_token_overhead_ms):.2f} ms "
            f"{'more' if per_token_overhead_ms >= 0 else 'less'} than the plain loop (from the median rates).",
            f"Streamed text identical on the API and plain sides in {same_text} of {len(runs[API])} "
            "paired runs (greedy decoding on the same weights).",
        ],
        data={
            side: [
                {"tokens": run.tokens, "seconds": run.seconds, "first_text_seconds": run.first_text_seconds}
                for run in side_runs
            ]
            for side, side_runs in runs.items()
        },
    )
    if ratio < TARGET:
        section.explanation = _explain_miss(ratio, engine_vs_plain, api_vs_engine)
    section.data["prompts"] = prompts
    logger.info("streaming: API/plain = %.2f, engine/plain = %.2f", ratio, engine_vs_plain)
    return section
