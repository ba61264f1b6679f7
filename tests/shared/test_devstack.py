"""`adgen dev`: Redis, both workers and the API as local processes, stopped together."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import psutil
import pytest

from tests.conftest import adgen_command, free_port, wait_until


def api_is_healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def dev_stack(tmp_path, monkeypatch):
    """Start `adgen dev` on a free port with its own volumes; yields (process, base URL)."""
    monkeypatch.setenv("VOLUMES_DIR", str(tmp_path / "volumes"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    port = free_port()
    process = subprocess.Popen(
        adgen_command("dev", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: api_is_healthy(base_url), timeout=120, what="adgen dev to serve /healthz")
        yield process, base_url
    finally:
        if process.poll() is None:
            # SIGINT, like Ctrl-C, so the launcher stops its services; SIGKILL would orphan them.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                process.kill()
                process.wait()


def service_children(process: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=False)


def test_dev_starts_four_services_with_redis_aof(dev_stack, tmp_path):
    process, _ = dev_stack

    commands = [" ".join(child.cmdline()) for child in service_children(process)]

    assert any("redis-server" in command for command in commands)
    assert any("worker train" in command for command in commands)
    assert any("worker eval" in command for command in commands)
    assert any(" serve " in f"{command} " for command in commands)
    wait_until(lambda: any((tmp_path / "volumes" / "redis").glob("appendonly*")), 10, what="Redis AOF files")


def test_ctrl_c_stops_every_service(dev_stack):
    process, _ = dev_stack
    children = service_children(process)

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after Ctrl-C: {[child.cmdline() for child in alive]}"


def test_one_service_exiting_stops_the_rest(dev_stack):
    process, _ = dev_stack
    children = service_children(process)
    api = next(child for child in children if "serve" in child.cmdline())

    api.kill()

    assert process.wait(timeout=60) == 1
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after the API died: {[child.cmdline() for child in alive]}"
