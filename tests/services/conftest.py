"""Fixtures that run the stack's processes: the API under uvicorn, rq workers and extra Redis servers.

- `start_api(env)` starts `adgen serve` and returns its base URL.
- `start_worker(queue, env)` starts `adgen worker QUEUE` and returns it once it registered in Redis.
- `start_redis()` starts a private redis-server, apart from the session's.

Each child gets the test's environment (REDIS_URL, VOLUMES_DIR, DATA_DIR ...) updated with `env`.
It is stopped when the test ends, and its output is printed then, so a failing test shows it.
Tests that share processes across a module call `launch_api`, `launch_worker` and `launch_redis`
from a module-scoped fixture instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, adgen_command, free_port, wait_until

STARTUP_TIMEOUT = 90  # seconds; the API imports the generation stack, slow on a busy CPU


@dataclass
class ServiceProcess:
    """A child process of a test, with its combined stdout and stderr in `log_path`."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str = ""

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10) -> None:
        """Stop with SIGTERM, then SIGKILL; a worker's work process dies with it (PR_SET_PDEATHSIG)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def child_env(env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}


def _spawn(name: str, command: list[str], env: dict[str, str] | None, log_dir: Path) -> ServiceProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=child_env(env), stdout=log, stderr=subprocess.STDOUT
        )
    return ServiceProcess(name=name, process=process, log_path=log_path)


def _answers(service: ServiceProcess, path: str) -> bool:
    service.check_running()
    try:
        return httpx.get(service.url + path, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def launch_api(log_dir: Path, env: dict[str, str] | None = None) -> ServiceProcess:
    """Start `adgen serve` on a free port and wait until GET /openapi.json succeeds."""
    port = free_port()
    service = _spawn(f"api-{port}", adgen_command("serve", "--port", str(port)), env, log_dir)
    service.url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: _answers(service, "/openapi.json"), timeout=STARTUP_TIMEOUT, what=f"the API on port {port}"
    )
    return service


def launch_worker(
    queue: str, log_dir: Path, env: dict[str, str] | None = None, name: str = ""
) -> ServiceProcess:
    """Start `adgen worker QUEUE` and wait until it registered in Redis."""
    from redis import Redis
    from rq.worker import Worker

    name = name or f"{queue}-test-{free_port()}"
    service = _spawn(f"worker-{name}", adgen_command("worker", queue, "--name", name), env, log_dir)
    redis = Redis.from_url(child_env(env)["REDIS_URL"])

    def registered() -> bool:
        service.check_running()
        return any(worker.name == name for worker in Worker.all(connection=redis))

    wait_until(registered, timeout=STARTUP_TIMEOUT, what=f"worker {name} to register")
    return service


def launch_redis(log_dir: Path) -> ServiceProcess:
    """Start a private redis-server on a free loopback port; `url` is its database 0."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed; run `apt-get install redis-server`")
    port = free_port()
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True)
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    service = _spawn(f"redis-{port}", [*command, "--dir", str(data_dir)], None, log_dir)
    service.url = f"redis://127.0.0.1:{port}/0"
    client = Redis.from_url(service.url)

    def pings() -> bool:
        service.check_running()
        try:
            return bool(client.ping())
        except RedisConnectionError:
            return False

    wait_until(pings, timeout=10, what=f"redis-server on port {port}")
    return service


@pytest.fixture
def stack_processes(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """The processes a test started; each is stopped, and its log printed, at teardown."""
    started: list[ServiceProcess] = []
    yield started
    for service in reversed(started):
        service.stop()
        print(f"--- {service.name} (exit {service.process.returncode}) ---\n{service.log_tail()}")


@pytest.fixture
def start_api(stack_processes, tmp_path: Path) -> Callable[..., str]:
    """Start `adgen serve` with the test's environment plus `env`; returns its base URL."""

    def start(env: dict[str, str] | None = None) -> str:
        service = launch_api(tmp_path / "logs", env)
        stack_processes.append(service)
        return service.url

    return start


@pytest.fixture
def start_worker(stack_processes, tmp_path: Path) -> Callable[..., ServiceProcess]:
    """Start `adgen worker QUEUE` with the test's environment plus `env`."""

    def start(queue: str, env: dict[str, str] | None = None, name: str = "") -> ServiceProcess:
        service = launch_worker(queue, tmp_path / "logs", env, name)
        stack_processes.append(service)
        return service

    return start


@pytest.fixture
def start_redis(stack_processes, tmp_path: Path) -> Callable[[], ServiceProcess]:
    """Start a private redis-server, apart from the session's; `url` is its database 0."""

    def start() -> ServiceProcess:
        service = launch_redis(tmp_path / "logs")
        stack_processes.append(service)
        return service

    return start
