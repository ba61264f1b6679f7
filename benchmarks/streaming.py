"""Streaming overhead: POST /generate over HTTP against `model.generate` with a TextIteratorStreamer.

Both sides decode greedily on the same weights, prompt and template, and generate exactly the
same number of tokens: prompts are chosen where the API's greedy answer runs to `max_new_tokens`
without a stop token, and the plain side passes `min_new_tokens = max_new_tokens`, which changes
no greedy token when no stop token would win anyway.
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
from benchmarks.report import Section
from benchmarks.stats import alternate, median, paired_ratio
from shared.hparams import ADGEN_SOURCE_PREFIX

logger = logging.getLogger(__name__)

TARGET = 0.9  # The API keeps at least 90% of the plain tokens per second.
API, PLAIN = "api", "plain"


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
        started = time.perf_counter()
        input_ids = torch.tensor([prompt_ids], device=self.device)

        def generate() -> None:
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
        return StreamRun(
            tokens=int(outputs[0].shape[1]) - len(prompt_ids),
            seconds=seconds,
            first_text_seconds=first_text,
            text="".join(pieces),
            finish_reason="length",
        )


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


def measure_streaming(
    base_url: str, plain: PlainModel, prompts: list[str], max_new_tokens: int, rounds: int
) -> Section:
    """Alternate plain and API runs of each prompt for `rounds` rounds; compare tokens per second."""
    runs: dict[str, list[StreamRun]] = {API: [], PLAIN: []}
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        plain.stream(prompts[0], max_new_tokens)  # Warm-up of the in-process model.
        stream_generate(client, prompts[0], max_new_tokens)
        for round_index in range(rounds):
            for prompt_index, prompt in enumerate(prompts):
                for side in alternate(round_index + prompt_index, PLAIN, API):
                    if side == API:
                        runs[API].append(stream_generate(client, prompt, max_new_tokens))
                    else:
                        runs[PLAIN].append(plain.stream(prompt, max_new_tokens))
    for side, side_runs in runs.items():
        wrong = [run.tokens for run in side_runs if run.tokens != max_new_tokens]
        if wrong:
            raise RuntimeError(f"{side} runs generated {wrong} tokens instead of {max_new_tokens}")

    api_rates = [run.tokens_per_second for run in runs[API]]
    plain_rates = [run.tokens_per_second for run in runs[PLAIN]]
    ratio = paired_ratio(api_rates, plain_rates)
    api_first = median([run.first_text_seconds or 0.0 for run in runs[API]])
    plain_first = median([run.first_text_seconds or 0.0 for run in runs[PLAIN]])
    per_token_overhead_ms = (1 / median(api_rates) - 1 / median(plain_rates)) * 1000
    same_text = sum(
        api.text == plain_run.text.replace("\ufffd", "")
        for api, plain_run in zip(runs[API], runs[PLAIN], strict=True)
    )
    section = Section(
        key="streaming",
        title="Streaming overhead",
        measured="Tokens per second and time to first text of `POST /generate` (server-sent events, "
        "greedy), timed at an HTTP client against the uvicorn subprocess of the local stack.",
        baseline="`model.generate` with a `TextIteratorStreamer` in this process, on the same weights, "
        "device, prompt, chat template and number of new tokens.",
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
        rows=[_summary_row("API /generate", runs[API]), _summary_row("plain generate", runs[PLAIN])],
        ratio=ratio,
        ratio_name="API tokens/s ÷ plain tokens/s, median of paired runs",
        target=TARGET,
        notes=[
            f"Time to first text: API {api_first * 1000:.0f} ms, plain {plain_first * 1000:.0f} ms.",
            f"The API spends {per_token_overhead_ms:+.2f} ms per token more than the plain loop "
            "(from the median rates).",
            f"Streamed text identical on both sides in {same_text} of {len(runs[API])} paired runs "
            "(greedy decoding on the same weights).",
        ],
        data={
            side: [
                {"tokens": run.tokens, "seconds": run.seconds, "first_text_seconds": run.first_text_seconds}
                for run in side_runs
            ]
            for side, side_runs in runs.items()
        },
    )
    section.data["prompts"] = prompts
    logger.info("streaming: API/plain = %.2f", ratio)
    return section
