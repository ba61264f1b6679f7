"""Faults around the jobs API: a killed worker, Redis going away, and a missing API key.

Each test starts its own processes, because each breaks one of them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from shared.jobs.progress import read_state
from tests.conftest import wait_until
from tests.services.test_jobs_api import TINY_TRAINING

# The reaper must fail a dead worker's job within this many seconds.
REAP_DEADLINE = 60


def process_gone(pid: int) -> bool:
    """Tell whether `pid` exited; a zombie waiting for its new parent to reap it counts as exited."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_killed_worker_fails_job(start_redis, start_worker, start_api, tiny_model):
    from redis import Redis

    redis_service = start_redis()
    env = {"REDIS_URL": redis_service.url}
    worker = start_worker("train", env, name="train-doomed")
    http = httpx.Client(base_url=start_api(env), timeout=30)
    job_id = http.post("/v1/jobs/train", json={**TINY_TRAINING, "max_steps": 400, "save_steps": 400}).json()[
        "id"
    ]

    def training() -> bool:
        view = http.get(f"/v1/jobs/{job_id}").json()
        assert view["status"] not in {"finished", "failed", "canceled"}, view
        return bool((view["progress"] or {}).get("step"))

    wait_until(training, timeout=300, interval=0.3, what="the first training step")
    work_process = read_state(Redis.from_url(redis_service.url), job_id)["process"]["pid"]
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()

    def failed() -> dict | None:
        view = http.get(f"/v1/jobs/{job_id}").json()
        return view if view["status"] == "failed" else None

    view = wait_until(failed, timeout=REAP_DEADLINE, interval=0.5, what="the reaper to fail the job")
    assert view["error"]["type"] == "WorkerDied"
    assert view["error"]["message"].startswith("worker train-doomed stopped heartbeating (killed?)")
    wait_until(lambda: process_gone(work_process), timeout=10, what="the work process to die with its worker")


def test_redis_down_is_503(start_redis, start_api):
    redis_service = start_redis()
    url = start_api({"REDIS_URL": redis_service.url})
    redis_service.stop()

    for method, path, body in [
        ("GET", "/v1/jobs", None),
        ("POST", "/v1/jobs/train", {"dataset": "adgen_sample"}),
        ("POST", "/v1/jobs/eval", {"dataset": "adgen_sample"}),
        ("GET", "/v1/jobs/" + "0" * 32, None),
        ("DELETE", "/v1/jobs/" + "0" * 32, None),
        ("GET", "/v1/jobs/" + "0" * 32 + "/events", None),
    ]:
        response = httpx.request(method, url + path, json=body, timeout=30)
        assert response.status_code == 503, (method, path, response.text)
        assert response.json()["detail"].startswith("Redis is unreachable at 127.0.0.1:")

    invalid = httpx.post(url + "/v1/jobs/train", json={"lora_rank": 0}, timeout=30)
    assert invalid.status_code == 422


def test_api_key_required(redis_url, start_api):
    url = start_api({"API_KEY": "jobs-test-key-4f1c"})

    assert httpx.get(url + "/v1/jobs").status_code == 401
    wrong = httpx.get(url + "/v1/jobs", headers={"Authorization": "Bearer wrong-key"})
    assert wrong.status_code == 401
    right = httpx.get(url + "/v1/jobs", headers={"Authorization": "Bearer jobs-test-key-4f1c"})
    assert right.status_code == 200
    assert right.json() == {"jobs": []}
