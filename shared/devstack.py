"""`adgen dev` (`make dev`): the four services of docker-compose.yml as local processes.

Redis starts on a free loopback port with its data under the volumes folder (append-only file on,
as in the compose file) unless REDIS_URL is set. The trainer and evaluator workers and the API
start as `adgen` subprocesses; their output is prefixed with the service name. Ctrl-C, SIGTERM or
the exit of any one service stops them all.

This launcher copies its own environment into the children and overrides REDIS_URL; it is the
one place besides `shared.settings` that touches the environment, because starting processes is
its job.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import httpx

from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 15
COLORS = itertools.cycle(["\033[35m", "\033[36m", "\033[33m", "\033[32m"])
RESET = "\033[0m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalStack:
    """Start, watch and stop Redis, both workers and the API; usable as a context manager."""

    def __init__(self, settings: Settings, api_port: int, log_file: Path | None = None):
        self.settings = settings
        self.api_port = api_port
        self.log_file = log_file
        self._log_handle: TextIO | None = None
        self._log_lock = threading.Lock()
        self.processes: dict[str, subprocess.Popen] = {}
        self.redis_url = settings.redis_url
        self._threads: list[threading.Thread] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("w", encoding="utf-8")
        if "redis_url" not in self.settings.model_fields_set:
            self.redis_url = self._start_redis()
        # Passive OpenMP waiting keeps torch's threads from spinning against each other (see Makefile).
        env = {
            "OMP_WAIT_POLICY": "PASSIVE",
            **os.environ,
            "REDIS_URL": self.redis_url,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "shared.cli"]
        self._spawn("trainer", [*command, "worker", "train"], env)
        self._spawn("evaluator", [*command, "worker", "eval"], env)
        self._spawn("api", [*command, "serve", "--port", str(self.api_port)], env)

    def _start_redis(self) -> str:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server not found; install it (`apt-get install redis-server`) or set REDIS_URL"
            )
        port = free_port()
        folder = Path(self.settings.volumes_dir) / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "redis",
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder.resolve()),
             "--appendonly", "yes", "--save", ""],
            None,
        )  # fmt: skip
        return f"redis://127.0.0.1:{port}/0"

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None) -> None:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # Ctrl-C reaches this launcher only; it stops the children in order.
        )
        self.processes[name] = process
        thread = threading.Thread(target=self._relay, args=(name, process, next(COLORS)), daemon=True)
        thread.start()
        self._threads.append(thread)
        logger.info("started %s (pid %d)", name, process.pid)

    def _relay(self, name: str, process: subprocess.Popen, color: str) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._log_lock:
                if self._log_handle is not None:
                    self._log_handle.write(f"{name:<9}| {line}")
                    self._log_handle.flush()
                else:
                    sys.stdout.write(f"{color}{name:<9}|{RESET} {line}")
                    sys.stdout.flush()

    def wait_ready(self, timeout: float = 300) -> None:
        """Wait until the API responds on /healthz, failing early when a service exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.raise_if_exited()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the API did not respond on {self.api_url}/healthz within {timeout:.0f}s")

    def raise_if_exited(self) -> None:
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                where = self.log_file or "its log lines above"
                raise RuntimeError(f"service {name} exited with status {code}; see {where}")

    def stop(self) -> None:
        """Stop the API and workers first, Redis last, each with SIGTERM then SIGKILL."""
        order = [name for name in ("api", "trainer", "evaluator", "redis") if name in self.processes]
        for name in order:
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %ds; killing it", name, STOP_TIMEOUT_SECONDS)
                process.kill()
                process.wait()
        for thread in self._threads:
            thread.join(timeout=2)
        if self._log_handle is not None:
            self._log_handle.close()
        logger.info("local stack stopped")

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    from shared.logs import setup_logging

    parser = argparse.ArgumentParser(prog="adgen dev", description="Run the stack as local processes.")
    parser.add_argument("--port", type=int, default=8000, help="Port of the API (default: 8000).")
    args = parser.parse_args(argv)
    setup_logging()

    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    stack = LocalStack(get_settings(), args.port)
    with stack:
        logger.info("API on %s, Redis at %s; press Ctrl-C to stop", stack.api_url, stack.redis_url)
        try:
            while not stop_requested.is_set():
                stack.raise_if_exited()
                time.sleep(0.5)
        except KeyboardInterrupt:
            logger.info("Ctrl-C: stopping the stack")
        except RuntimeError as error:
            logger.error("%s; stopping the stack", error)
            return 1
    return 0
