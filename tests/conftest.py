"""Fixtures shared by all tests: a private redis-server, a session volume with the tiny model,
a small trained adapter, and helpers to run the project's commands as subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real ADGEN dev split lies outside the repository; it is never copied into it.
ADGEN_DEV = Path(os.environ.get("ADGEN_DEV", REPO.parent / "shared/data/AdvertiseGen/dev.json"))
SOURCE_PREFIX = "你现在是一名销售员，根据以下商品标签生成一段有吸引力的商品广告词。"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `check` until it returns a truthy value, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def adgen_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


@pytest.fixture(scope="session")
def session_volumes(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("volumes")


@pytest.fixture(scope="session", autouse=True)
def project_env(session_volumes: Path) -> Iterator[dict[str, str]]:
    """Point every test and subprocess at the session volume, the repo's data and no hub."""
    from shared.settings import get_settings

    values = {
        "VOLUMES_DIR": str(session_volumes),
        "DATA_DIR": str(REPO / "data"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "API_KEY": "",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        patch.chdir(REPO)
        get_settings.cache_clear()
        yield values
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Re-read settings in each test, since tests change the environment with monkeypatch."""
    from shared.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the tiny model's matrices are too small for intra-op threads to pay off."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the logging set-up that a command's `main` does, so later tests do not log to a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """Start a private redis-server on a free loopback port; yields its base URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed; run `bash .ci/run` or `apt-get install redis-server`")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    from redis import Redis

    client = Redis(port=port)
    wait_until(lambda: _pings(client), timeout=10, what="redis-server to answer PING")
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def _pings(client) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        return bool(client.ping())
    except RedisConnectionError:
        return False


@pytest.fixture
def redis_url(redis_server: str, monkeypatch) -> Iterator[str]:
    """A flushed database of the private server, also exported as REDIS_URL."""
    from redis import Redis

    url = f"{redis_server}/0"
    client = Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", url)
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def tiny_model(project_env) -> Path:
    """Folder of the tiny GLM model, built once per session from the repo's sample data."""
    from shared.modeling.loader import ensure_tiny_model
    from shared.settings import get_settings

    get_settings.cache_clear()
    return ensure_tiny_model("tiny-glm", get_settings())


@pytest.fixture(scope="session")
def trained_adapter(tiny_model: Path, session_volumes: Path) -> Path:
    """A LoRA adapter trained for a few steps on the bundled sample."""
    from shared.hparams import TrainArgs
    from shared.train.workflow import run_training

    output_dir = session_volumes / "adapters" / "session-sample"
    args = TrainArgs(
        dataset="adgen_sample",
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        max_steps=12,
        save_steps=6,
        logging_steps=2,
        lora_rank=8,
        source_prefix=SOURCE_PREFIX,
        disable_tqdm=True,
    )
    run_training(args)
    return output_dir
