"""The sections that need a running stack: streaming, concurrency and queue latency.

One `LocalStack` (redis-server, both rq workers and the API under uvicorn) serves all three. The
streaming and concurrency sections also load the model in this process, as the plain baseline
and as an in-process engine without HTTP, which splits the API's cost by layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from benchmarks.profile import Profile
from benchmarks.report import Section, failed_section
from benchmarks.workspace import DATASET, Workspace

logger = logging.getLogger(__name__)

STACK_SECTIONS = ("streaming", "concurrency", "queue")
READY_TIMEOUT_SECONDS = 300
CANDIDATE_PROMPTS = 32  # Prompts tried for streams that run to max_new_tokens without a stop token.

Guard = Callable[[str, Callable[[], Section]], Section]


def candidate_prompts(workspace: Workspace, count: int) -> list[str]:
    from shared.data.registry import load_examples

    return [example.prompt for example in load_examples(DATASET, workspace.data_dir, max_samples=count)]


def wait_for_model(base_url: str) -> None:
    """Wait until /readyz reports a loaded model and a reachable Redis."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API at {base_url} had no model loaded after {READY_TIMEOUT_SECONDS}s")


def run_stack_sections(
    workspace: Workspace, profile: Profile, selected: list[str], guarded: Guard
) -> dict[str, Section]:
    """Start one local stack, run the selected sections on it and stop it.

    A failure of the stack itself (it does not start, or a service exits) marks every selected
    section that has no result yet as not measured.
    """
    from shared.devstack import LocalStack, free_port
    from shared.inference.engine import Engine

    results: dict[str, Section] = {}
    engine = Engine(workspace.settings())
    log_file = workspace.root / "stack.log"
    try:
        with LocalStack(workspace.settings(), free_port(), log_file=log_file) as stack:
            stack.wait_ready(READY_TIMEOUT_SECONDS)
            wait_for_model(stack.api_url)
            _measure(stack.api_url, engine, workspace, profile, selected, guarded, results)
    except Exception as error:
        logger.exception("the local stack failed (its log: %s)", log_file)
        for name in selected:
            results.setdefault(name, failed_section(name, f"{type(error).__name__}: {error}"))
    finally:
        engine.close()
    return results


def _measure(
    api_url: str,
    engine,
    workspace: Workspace,
    profile: Profile,
    selected: list[str],
    guarded: Guard,
    results: dict[str, Section],
) -> None:
    from benchmarks.concurrency import measure_concurrency
    from benchmarks.job_queue import measure_queue
    from benchmarks.streaming import PlainModel, measure_streaming, select_prompts

    prompts: list[str] = []
    if "streaming" in selected or "concurrency" in selected:
        engine.load(str(workspace.model_path))
        prompts = select_prompts(
            api_url,
            candidate_prompts(workspace, CANDIDATE_PROMPTS),
            max(profile.stream_tokens, profile.concurrency_tokens),
            max(profile.stream_prompts, *profile.concurrency_levels),
        )
    if "streaming" in selected:
        results["streaming"] = guarded(
            "streaming",
            lambda: measure_streaming(
                api_url,
                PlainModel.load(workspace.model_path),
                engine,
                prompts[: profile.stream_prompts],
                profile.stream_tokens,
                profile.stream_rounds,
            ),
        )
    if "concurrency" in selected:
        results["concurrency"] = guarded(
            "concurrency",
            lambda: measure_concurrency(
                api_url,
                engine,
                prompts,
                profile.concurrency_levels,
                profile.concurrency_tokens,
                profile.concurrency_rounds,
            ),
        )
    if "queue" in selected:
        results["queue"] = guarded(
            "queue",
            lambda: measure_queue(api_url, profile.queue_jobs, profile.queue_steps, profile.warm_up),
        )
