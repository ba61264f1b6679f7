"""`python -m benchmarks.run` (`make bench`): run every benchmark once and write the report.

The in-process measurements (training, prediction) run first, with no server. Then one local
stack (redis-server, both rq workers and the API) serves streaming, concurrency and the queue.
The GPU figures are derived last from the others. A section that fails is reported as not
measured, and the others still run.

OpenMP's wait policy is set to PASSIVE for this process and the stack's children, unless the
environment sets OMP_WAIT_POLICY. With the default policy, OpenMP threads spin while they wait.
On this project's shared 2-core machine, while other processes kept both cores busy, a decode
step of the tiny model then took 30 to 50 ms instead of 4 ms, in whichever process it hit. The
likely cause is that a descheduled thread stalls every parallel region of its process. That
random penalty would decide the ratios, so both sides of every comparison run with PASSIVE.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.profile import FULL, QUICK, Profile
from benchmarks.report import TITLES, Section, failed_section, write_report
from benchmarks.stack_sections import STACK_SECTIONS, run_stack_sections
from benchmarks.workspace import REPO, Workspace, choose_data_file, create_workspace

logger = logging.getLogger("benchmarks.run")

SECTIONS = ("training", "prediction", "streaming", "concurrency", "queue", "gpu")
OMP_WAIT_POLICY = "PASSIVE"


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
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch-threads must be at least 1, got {args.torch_threads}")
    return args


def guarded(key: str, measure: Callable[[], Section]) -> Section:
    """Run one measurement. A failure becomes a section that reports it, and the run goes on."""
    started = time.monotonic()
    logger.info("measuring %s", key)
    try:
        section = measure()
    except Exception as error:
        logger.exception("benchmark %s failed", key)
        return failed_section(key, f"{type(error).__name__}: {error}")
    section.settings["section time (s)"] = round(time.monotonic() - started)
    return section


def run_sections(workspace: Workspace, profile: Profile, selected: list[str]) -> list[Section]:
    from benchmarks.prediction import measure_prediction
    from benchmarks.training import measure_training

    results: dict[str, Section] = {}
    if "training" in selected:
        results["training"] = guarded(
            "training",
            lambda: measure_training(
                workspace, profile.train_rows, profile.train_batch_size, profile.train_rounds, profile.warm_up
            ),
        )
    if "prediction" in selected:
        results["prediction"] = guarded(
            "prediction",
            lambda: measure_prediction(
                workspace,
                profile.predict_rows,
                profile.predict_tokens,
                profile.predict_batch_size,
                profile.predict_rounds,
                profile.warm_up,
            ),
        )
    on_stack = [name for name in selected if name in STACK_SECTIONS]
    if on_stack:
        results.update(run_stack_sections(workspace, profile, on_stack, guarded))
    if "gpu" in selected:
        results["gpu"] = guarded("gpu", lambda: gpu_figures(workspace, results))
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
        single_stream = concurrency.rows[0][1]  # Total tokens/s of one stream through the API.
    return gpu_section(
        str(workspace.model_path),
        describe_runs(training) if training is not None and not training.error else None,
        single_stream,
    )


def describe_data(data_file: Path) -> str:
    """Name the data file (its path in the repository, else its file name) and count its lines."""
    name = str(data_file.relative_to(REPO)) if data_file.is_relative_to(REPO) else data_file.name
    lines = sum(1 for line in data_file.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    return f"ADGEN lines from {name} ({lines} lines); the tiny model's tokenizer is trained on them"


def build_header(
    workspace: Workspace, profile: Profile, args: argparse.Namespace, machine: dict, seconds: float
) -> dict[str, Any]:
    from benchmarks.machine import load_average

    machine = {**machine, "load average at end (1, 5, 15 min)": load_average()}
    settings = {
        "command": "python -m benchmarks.run" + (" --quick" if args.quick else ""),
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "total runtime": f"{seconds / 60:.1f} min",
        "data": describe_data(workspace.data_file),
        "model": "tiny-glm (GlmForCausalLM, 4 layers, hidden size 256, random weights)",
        "torch threads": args.torch_threads or "torch's default",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        **profile.describe(),
    }
    intro = [
        "Written by `make bench` (`python -m benchmarks.run`). Every figure is measured next to its "
        "baseline in the same run on the same machine. The sides alternate round by round after a "
        "warm-up, and each ratio is the median of the per-round ratios.",
        "",
        f"This run had {machine['cores usable']} usable cores, shared with other processes (see the load "
        "averages below), so absolute numbers move with their load and ratios move much less. Every "
        f"process of the run has `OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}`: with OpenMP's "
        "default spin-waiting, a busy 2-core machine made a decode step of the tiny model 4 to 8 times "
        "slower, in whichever process it hit. Rerun `make bench` to refresh this page.",
    ]
    return {"intro": intro, "machine": machine, "settings": settings}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import describe_machine
    from shared.logs import setup_logging

    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    # Before torch loads, so that this process and the stack's children wait alike.
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
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
        logger.info("kept the workspace %s (the stack's log is stack.log in it)", workspace.root)
    else:
        workspace.remove()
    print(f"wrote {markdown_path} and {json_path} in {(time.monotonic() - started) / 60:.1f} min")
    for section in sections:
        print(f"  {TITLES[section.key]}: {section.verdict()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
