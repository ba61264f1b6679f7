"""Helpers of the generation tests: an `adgen serve` subprocess on the tiny model, and an SSE parser.

`shared_inference_api()` starts one API per test session, with its own redis-server so that
reload messages of other tests never reach it, and stops both when the session ends. Tests that
switch its model switch it back. `launch_inference_api(env)` starts a private one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, adgen_command, free_port, wait_until

STARTUP_TIMEOUT = 120  # Seconds until the model is loaded; imports are slow on a busy 2-core machine.


@dataclass
class ApiProcess:
    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed; run `apt-get install redis-server`")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    def pings() -> bool:
        try:
            return bool(Redis(port=port).ping())
        except RedisConnectionError:
            return False

    wait_until(pings, timeout=10, what="redis-server to answer PING")
    return process, f"redis://127.0.0.1:{port}/0"


def launch_inference_api(
    log_dir: Path, env: dict[str, str], headers: dict | None = None, wait_for_model: bool = True
) -> ApiProcess:
    """Start `adgen serve` with `env` added; wait until its model is loaded, or only until /healthz responds."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"api-{port}.log"
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            adgen_command("serve", "--port", str(port)),
            cwd=REPO,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = ApiProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, env=env)

    def started() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"adgen serve exited with {process.returncode}:\n{api.log_tail()}")
        try:
            if not wait_for_model:
                return httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200
            models = httpx.get(f"{api.url}/v1/models", headers=headers, timeout=5)
        except httpx.TransportError:
            return False
        return models.status_code == 200 and any(
            card["status"] == "serving" for card in models.json()["data"]
        )

    try:
        wait_until(started, timeout=STARTUP_TIMEOUT, interval=0.3, what=f"the API on port {port}")
    except AssertionError:
        api.stop()
        raise
    return api


_shared: dict[str, ApiProcess] = {}


def shared_inference_api(request: pytest.FixtureRequest, tiny_model: Path) -> ApiProcess:
    """Return the session's API on the tiny model, starting it (and its Redis) on first use."""
    if "api" in _shared and _shared["api"].process.poll() is None:
        return _shared["api"]
    folder = request.getfixturevalue("tmp_path_factory").mktemp("inference-api")
    redis_process, redis_url = start_redis(folder / f"redis-{free_port()}")
    api = launch_inference_api(folder, {"REDIS_URL": redis_url, "SERVED_MODEL": str(tiny_model)})
    _shared["api"] = api

    def stop() -> None:
        api.stop()
        redis_process.terminate()
        redis_process.wait(timeout=10)
        _shared.pop("api", None)

    request.config.add_cleanup(stop)
    return api


def served_model_id(api: ApiProcess, headers: dict | None = None) -> str:
    cards = httpx.get(f"{api.url}/v1/models", headers=headers, timeout=10).json()["data"]
    return next(card["id"] for card in cards if card["status"] == "serving")


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """Yield (event name, data) per server-sent event; data is parsed JSON when it is JSON."""
    name, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    yield name, json.loads(text)
                except json.JSONDecodeError:
                    yield name, text
            name, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].removeprefix(" "))
