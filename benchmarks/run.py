"""`python -m benchmarks.run` (`make bench`): run every benchmark once and write the report.

Order: the in-process measurements (training, prediction) run first, with no server; then one
local stack (redis-server, both rq workers and the API) serves streaming, concurrency and the
queue; the GPU figures are derived last from the others. A section that fails is reported as
not measured and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import Section, failed_section, write_report
from benchmarks.workspace import REPO, Workspace, choose_data_file, create_workspace

logger = logging.getLogger("benchmarks.run")

SECTIONS = ("training", "prediction", "streaming", "concurrency", "queue", "gpu")
STACK_SECTIONS = {"streaming", "concurrency", "queue"}
READY_TIMEOUT_SECONDS = 300
CANDIDATE_PROMPTS = 32  # Prompts tried for streams that run to max_new_tokens without a stop token.


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; `FULL` is `make bench`, `QUICK` a smoke run of every section."""

    stream_prompts: int = 3
    stream_rounds: int = 3
    stream_tokens: int = 128
    concurrency_levels: tuple[int, ...] = (1, 4, 8)
    concurrency_rounds: int = 3
    concurrency_tokens: int = 128
    train_samples: int = 96
    train_batch_size: int = 8
    train_rounds: int = 2
    predict_samples: int = 32
    predict_batch_size: int = 16
    predict_tokens: int = 32
    predict_rounds: int = 2
    queue_jobs: int = 8
    queue_steps: int = 2
    warm_up: bool = True


FULL = Profile()
QUICK = Profile(
    stream_prompts=1,
    stream_rounds=1,
    stream_tokens=8,
    concurrency_rounds=1,
    concurrency_tokens=8,
    train_samples=8,
    train_rounds=1,
    predict_samples=4,
    predict_batch_size=4,
    predict_tokens=4,
    predict_rounds=1,
    queue_jobs=1,
    queue_steps=1,
    warm_up=False,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    default_dev = os.environ.get("ADGEN_DEV")  # The same variable as the test suite's.
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="Measure each speed target against its baseline."
    )
    parser.add_argument(
        "--dev-file",
        type=Path,
        default=Path(default_dev) if default_dev else None,
        help="ADGEN lines to train, predict and prompt with (JSON lines); default: $ADGEN_DEV, else "
        "../shared/data/AdvertiseGen/dev.json, else data/adgen_sample.json.",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=REPO / "docs", help="Folder of benchmarks.md and benchmarks.json."
    )
    parser.add_argument(
        "--quick", action="store_true", help="Smallest sizes: checks that every section runs."
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"Comma-separated subset of: {', '.join(SECTIONS)}."
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="CPU threads of torch in this process and the stack's (sets OMP_NUM_THREADS); default: torch's.",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="Keep the temporary workspace.")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def guarded(key: str, title: str, measure: Callable[[], Section]) -> Section:
    """Run one measurement; a failure becomes a section that says so, and the run goes on."""
    started = time.monotonic()
    logger.info("measuring %s", key)
    try:
        section = measure()
    except Exception as error:
        logger.exception("benchmark %s failed", key)
        return failed_section(key, title, f"{type(error).__name__}: {error}")
    section.settings["section time (s)"] = round(time.monotonic() - started)
    return section


def candidate_prompts(workspace: Workspace, count: int) -> list[str]:
    from benchmarks.workspace import DATASET
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
    workspace: Workspace, profile: Profile, wanted: list[str], results: dict[str, Section]
) -> None:
    """Start one local stack and run the sections that need it."""
    from benchmarks.concurrency import measure_concurrency
    from benchmarks.job_queue import measure_queue
    from benchmarks.streaming import PlainModel, measure_streaming, select_prompts
    from shared.devstack import LocalStack, free_port

    stack = LocalStack(workspace.settings(), free_port(), log_file=workspace.root / "stack.log")
    with stack:
        stack.wait_ready(READY_TIMEOUT_SECONDS)
        wait_for_model(stack.api_url)
        needed = max(profile.stream_prompts, max(profile.concurrency_levels))
        prompts: list[str] = []
        if {"streaming", "concurrency"} & set(wanted):
            prompts = select_prompts(
                stack.api_url,
                candidate_prompts(workspace, CANDIDATE_PROMPTS),
                max(profile.stream_tokens, profile.concurrency_tokens),
                needed,
            )
        if "streaming" in wanted:
            results["streaming"] = guarded(
                "streaming",
                "Streaming overhead",
                lambda: measure_streaming(
                    stack.api_url,
                    PlainModel.load(workspace.model_path),
                    prompts[: profile.stream_prompts],
                    profile.stream_tokens,
                    profile.stream_rounds,
                ),
            )
        if "concurrency" in wanted:
            results["concurrency"] = guarded(
                "concurrency",
                "Concurrent streams",
                lambda: measure_concurrency(
                    stack.api_url,
                    prompts,
                    profile.concurrency_levels,
                    profile.concurrency_tokens,
                    profile.concurrency_rounds,
                ),
            )
        if "queue" in wanted:
            results["queue"] = guarded(
                "queue",
                "Queue latency",
                lambda: measure_queue(
                    stack.api_url, profile.queue_jobs, profile.queue_steps, profile.warm_up
                ),
            )


def run_sections(workspace: Workspace, profile: Profile, wanted: list[str]) -> list[Section]:
    from benchmarks.prediction import measure_prediction
    from benchmarks.training import measure_training

    results: dict[str, Section] = {}
    if "training" in wanted:
        results["training"] = guarded(
            "training",
            "Training throughput",
            lambda: measure_training(
                workspace,
                profile.train_samples,
                profile.train_batch_size,
                profile.train_rounds,
                profile.warm_up,
            ),
        )
    if "prediction" in wanted:
        results["prediction"] = guarded(
            "prediction",
            "Batched prediction",
            lambda: measure_prediction(
                workspace,
                profile.predict_samples,
                profile.predict_tokens,
                profile.predict_batch_size,
                profile.predict_rounds,
                profile.warm_up,
            ),
        )
    stack_wanted = [name for name in wanted if name in STACK_SECTIONS]
    if stack_wanted:
        try:
            run_stack_sections(workspace, profile, stack_wanted, results)
        except Exception as error:
            logger.exception("the local stack failed; see %s", workspace.root / "stack.log")
            for name in stack_wanted:
                results.setdefault(
                    name, failed_section(name, name.capitalize(), f"{type(error).__name__}: {error}")
                )
    if "gpu" in wanted:
        results["gpu"] = guarded("gpu", "GPU efficiency", lambda: gpu_figures(workspace, results))
    return [results[name] for name in SECTIONS if name in results]


def gpu_figures(workspace: Workspace, results: dict[str, Section]) -> Section:
    import torch

    from benchmarks.gpu import gpu_section, no_gpu_section
    from benchmarks.training import describe_runs

    if not torch.cuda.is_available():
        return no_gpu_section()
    training = results.get("training")
    concurrency = results.get("concurrency")
    single_stream = None
    if concurrency is not None and not concurrency.error:
        single_stream = concurrency.rows[0][1]  # Total tokens/s of the lowest level, one stream.
    return gpu_section(
        str(workspace.model_path),
        describe_runs(training) if training is not None and not training.error else None,
        single_stream,
    )


def build_header(
    workspace: Workspace, profile: Profile, args: argparse.Namespace, machine: dict, seconds: float
) -> dict[str, Any]:
    from benchmarks.machine import load_average

    data_file = workspace.data_file
    shown = os.path.relpath(data_file, REPO) if data_file.is_relative_to(REPO.parent) else str(data_file)
    lines = sum(1 for line in data_file.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    machine = {**machine, "load average at end (1, 5, 15 min)": load_average()}
    settings = {
        "command": "python -m benchmarks.run" + (" --quick" if args.quick else ""),
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "total runtime": f"{seconds / 60:.1f} min",
        "data": f"{shown} ({lines} lines); the tiny model's tokenizer is trained on these lines",
        "model": "tiny-glm (GlmForCausalLM, 4 layers, hidden size 256, random weights)",
        "torch threads": args.torch_threads or "torch default",
        **{key: value for key, value in asdict(profile).items() if key != "warm_up"},
        "warm-up runs": "yes" if profile.warm_up else "no",
    }
    intro = [
        "Written by `make bench` (`python -m benchmarks.run`). Every figure is measured next to its "
        "baseline in the same run on the same machine; the two sides alternate round by round after a "
        "warm-up, and each ratio is the median of the per-round ratios.",
        "",
        "The machine is a shared 2-core virtual machine: absolute numbers move with the load of other "
        "processes (see the load averages below), ratios much less. Rerun `make bench` to refresh this page.",
    ]
    return {"intro": intro, "machine": machine, "settings": settings}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import describe_machine
    from shared.logs import setup_logging

    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if args.torch_threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
        torch.set_num_threads(args.torch_threads)
    profile = QUICK if args.quick else FULL
    started = time.monotonic()
    machine = describe_machine()
    try:
        data_file = choose_data_file(args.dev_file)
    except FileNotFoundError as error:
        print(f"benchmarks: error: {error}", file=sys.stderr)
        return 2
    workspace = create_workspace(data_file, max(profile.concurrency_levels))
    logger.info("workspace %s, data %s", workspace.root, data_file)
    sections = run_sections(workspace, profile, args.sections)
    header = build_header(workspace, profile, args, machine, time.monotonic() - started)
    markdown_path, json_path = write_report(args.output_dir, header, sections)
    failed = [section.key for section in sections if section.error]
    if args.keep_workdir or failed:
        logger.info("kept the workspace %s (stack log: stack.log)", workspace.root)
    else:
        workspace.remove()
    print(f"wrote {markdown_path} and {json_path} in {(time.monotonic() - started) / 60:.1f} min")
    for section in sections:
        print(f"  {section.title}: {section.verdict()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
