"""The machine and software a benchmark ran on: CPU, cores, memory, GPU, load and versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "rq", "redis", "fastapi", "uvicorn")


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo (Linux), else what `platform` reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Return the total memory in GiB from /proc/meminfo, or None where it is not available."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text(encoding="utf-8").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)  # The value is in KiB.
    return None


def usable_cores() -> int:
    """Return the cores this process may run on (its CPU affinity), which containers may limit."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages as text, e.g. `1.20 0.80 0.50`."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def gpu_description() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none (no CUDA device in this run)"
    properties = torch.cuda.get_device_properties(0)
    count = torch.cuda.device_count()
    return f"{properties.name}, {properties.total_memory / 1024**3:.0f} GiB" + (
        f" (device 0 of {count})" if count > 1 else ""
    )


def describe_machine() -> dict[str, Any]:
    """Return the machine table of the report, with the load average at the start of the run."""
    import torch

    description: dict[str, Any] = {
        "CPU": cpu_model(),
        "cores usable": usable_cores(),
        "torch CPU threads": torch.get_num_threads(),
        "memory (GiB)": memory_gib(),
        "GPU": gpu_description(),
        "load average at start (1, 5, 15 min)": load_average(),
        "python": platform.python_version(),
    }
    for package in VERSIONED_PACKAGES:
        try:
            description[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            description[package] = "not installed"
    return description
