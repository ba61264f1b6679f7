"""The jobs API against a real stack: a private redis-server, `adgen worker train`, `adgen worker eval`
and `adgen serve`, all subprocesses sharing the session's volumes and its tiny model.

Training jobs are a handful of steps on the bundled sample, so each takes seconds of compute. The
waits allow minutes, because the CPU may be shared.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from shared.jobs.constants import MODEL_RELOAD_CHANNEL
from shared.jobs.progress import read_events, read_state
from shared.jobs.tasks import latest_checkpoint_step
from tests.conftest import wait_until
from tests.services.conftest import ServiceProcess, launch_api, launch_redis, launch_worker

JOB_TIMEOUT = 300  # seconds a small job may take on a busy CPU
TINY_TRAINING = {
    "dataset": "adgen_sample",
    "max_samples": 16,
    "max_source_length": 64,
    "max_target_length": 64,
    "per_device_train_batch_size": 2,
    "logging_steps": 1,
    "lora_rank": 4,
}
TINY_EVAL = {
    "dataset": "adgen_sample",
    "max_samples": 4,
    "max_source_length": 64,
    "max_new_tokens": 16,
    "per_device_eval_batch_size": 4,
}
TERMINAL = {"finished", "failed", "canceled"}


@dataclass
class Stack:
    http: httpx.Client
    redis: Redis
    adapters_dir: Path
    train_worker: ServiceProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model: Path, session_volumes: Path) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("jobs-stack")
    services: list[ServiceProcess] = []
    try:
        services.append(launch_redis(log_dir))
        env = {"REDIS_URL": services[0].url}
        services.append(launch_worker("train", log_dir, env, name="train-stack"))
        services.append(launch_worker("eval", log_dir, env, name="eval-stack"))
        services.append(launch_api(log_dir, env))
        with httpx.Client(base_url=services[-1].url, timeout=30) as http:
            yield Stack(http, Redis.from_url(services[0].url), session_volumes / "adapters", services[1])
    finally:
        for service in reversed(services):
            service.stop()
            print(f"--- {service.name} (exit {service.process.returncode}) ---\n{service.log_tail()}")


def get_job(stack: Stack, job_id: str) -> dict:
    response = stack.http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_end(stack: Stack, job_id: str) -> dict:
    """Poll until the job is finished, failed or canceled; returns its last view."""

    def ended() -> dict | None:
        view = get_job(stack, job_id)
        return view if view["status"] in TERMINAL else None

    return wait_until(ended, timeout=JOB_TIMEOUT, interval=0.3, what=f"job {job_id} to end")


def wait_for_step(stack: Stack, job_id: str, step: int) -> dict:
    """Poll until the started job's progress reaches `step`; fails at once if the job ended."""

    def reached() -> dict | None:
        view = get_job(stack, job_id)
        assert view["status"] not in TERMINAL, view
        progress = view["progress"] or {}
        return view if view["status"] == "started" and (progress.get("step") or 0) >= step else None

    return wait_until(reached, timeout=JOB_TIMEOUT, interval=0.2, what=f"job {job_id} to reach step {step}")


def submit_training(stack: Stack, **options) -> str:
    response = stack.http.post("/v1/jobs/train", json={**TINY_TRAINING, **options})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == body["url"] == f"/v1/jobs/{body['id']}"
    return body["id"]


def read_sse(stack: Stack, job_id: str, last_event_id: str | None = None) -> list[dict]:
    """Read the job's event stream until the server ends it; each event has id, event and data."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict] = []
    fields: dict = {}
    timeout = httpx.Timeout(30, read=JOB_TIMEOUT)
    with stack.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                if "data" in fields:
                    events.append({**fields, "data": json.loads(fields["data"])})
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


def stream_order(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence)


def test_train_job_end_to_end(stack: Stack):
    reloads = stack.redis.pubsub(ignore_subscribe_messages=True)
    reloads.subscribe(MODEL_RELOAD_CHANNEL)
    job_id = submit_training(stack, max_steps=8, save_steps=4, eval=TINY_EVAL, serve=True)

    running = wait_for_step(stack, job_id, 1)
    assert running["progress"]["total_steps"] == 8
    assert running["progress"]["samples_done"] >= 2
    assert running["started_at"] is not None

    with stack.http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert next(response.iter_lines()).startswith("id: ")
    # That client went away mid-stream; the next one is served in full.
    events = read_sse(stack, job_id)
    ids = [event["id"] for event in events]
    assert ids == sorted(ids, key=stream_order)
    assert {"progress", "log", "status"} <= {event["event"] for event in events}
    assert events[0]["data"] == {"status": "queued"}
    assert events[-1]["event"] == "status"
    assert events[-1]["data"]["status"] == "finished"
    steps = [event["data"]["step"] for event in events if event["event"] == "progress"]
    assert steps[-1] == 8

    middle = len(events) // 2
    replay = read_sse(stack, job_id, last_event_id=ids[middle])
    assert [event["id"] for event in replay] == ids[middle + 1 :]

    view = wait_for_end(stack, job_id)
    assert view["status"] == "finished", view["error"]
    assert view["ended_at"] is not None
    result = view["result"]
    assert (Path(result["output_dir"]) / "adapter_model.safetensors").is_file()
    assert result["metrics"]["train_loss"] > 0
    follow_ups = result["follow_ups"]
    assert follow_ups["served"] is True
    assert (Path(follow_ups["merged_dir"]) / "config.json").is_file()
    message = wait_until(lambda: reloads.get_message(timeout=1), timeout=10, what="the model reload message")
    assert json.loads(message["data"]) == {"path": follow_ups["merged_dir"], "name": job_id}

    evaluation = wait_for_end(stack, follow_ups["eval_job_id"])
    assert evaluation["type"] == "eval"
    assert evaluation["status"] == "finished", evaluation["error"]
    assert evaluation["result"]["train_job_id"] == job_id
    for metric in ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"):
        assert 0 <= evaluation["result"]["metrics"][metric] <= 100

    assert stack.http.delete(f"/v1/jobs/{job_id}").status_code == 409
    assert stack.http.post(f"/v1/jobs/{job_id}/resume").status_code == 409
    listed = stack.http.get("/v1/jobs", params={"type": "eval", "status": "finished"}).json()["jobs"]
    assert follow_ups["eval_job_id"] in [job["id"] for job in listed]
    # The worker's parent ran a training job without loading torch itself.
    assert "libtorch" not in Path(f"/proc/{stack.train_worker.process.pid}/maps").read_text()


def test_cancel_stops_running_and_queued_jobs(stack: Stack):
    job_id = submit_training(stack, max_steps=400, save_steps=400)
    wait_for_step(stack, job_id, 1)
    queued_id = submit_training(stack, max_steps=2)  # Waits: the only train worker is busy.

    response = stack.http.delete(f"/v1/jobs/{queued_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"

    response = stack.http.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True

    view = wait_for_end(stack, job_id)
    assert view["status"] == "canceled", view["error"]
    step = view["result"]["checkpoint_step"]
    assert 1 <= step < 400
    state = json.loads(
        (stack.adapters_dir / job_id / f"checkpoint-{step}" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == step
    assert stack.http.delete(f"/v1/jobs/{job_id}").status_code == 409
    evaluation = stack.http.post("/v1/jobs/eval", json={**TINY_EVAL, "train_job_id": job_id})
    assert evaluation.status_code == 409, evaluation.text
    assert get_job(stack, queued_id)["status"] == "canceled"


def test_killed_work_process_fails_then_resumes(stack: Stack):
    job_id = submit_training(stack, max_steps=10, save_steps=2)
    output_dir = stack.adapters_dir / job_id
    wait_until(lambda: latest_checkpoint_step(output_dir), timeout=JOB_TIMEOUT, what="a first checkpoint")
    pid = read_state(stack.redis, job_id)["process"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # Freeze it, so the checkpoint read below is the one it dies with.
    checkpoint = latest_checkpoint_step(output_dir)
    assert checkpoint is not None and checkpoint < 10
    os.kill(pid, signal.SIGKILL)

    failed = wait_for_end(stack, job_id)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "WorkerDied"
    assert "killed by signal 9 (SIGKILL)" in failed["error"]["message"]
    assert f"POST /v1/jobs/{job_id}/resume" in failed["error"]["message"]

    resumed = stack.http.post(f"/v1/jobs/{job_id}/resume")
    assert resumed.status_code == 202, resumed.text
    assert stack.http.post(f"/v1/jobs/{job_id}/resume").status_code == 409

    finished = wait_for_end(stack, job_id)
    assert finished["status"] == "finished", finished["error"]
    assert finished["result"]["resumed_from_step"] == checkpoint
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 10
    events = read_events(stack.redis, job_id)
    resume_at = next(i for i, event in enumerate(events) if event.data.get("resumed"))
    first_progress = next(event for event in events[resume_at:] if event.kind == "progress")
    assert first_progress.data["step"] == checkpoint


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"lora_rank": 0}, ["body", "lora_rank"]),
        ({"learning_rate": 2}, ["body", "learning_rate"]),
        ({"retries": 6}, ["body", "retries"]),
        ({"output_dir": "/tmp/elsewhere"}, ["body", "output_dir"]),
        ({"dataset": "no_such_dataset"}, ["body", "dataset"]),
        ({"model_name_or_path": "no-such-model"}, ["body", "model_name_or_path"]),
        ({"model_name_or_path": "../models/tiny-glm"}, ["body", "model_name_or_path"]),
        ({"lora_target": "q_proj,no_such_proj"}, ["body", "lora_target"]),
        ({"eval": {"dataset": "no_such_dataset"}}, ["body", "eval", "dataset"]),
        ({"eval": {"max_new_tokens": 0}}, ["body", "eval", "max_new_tokens"]),
    ],
)
def test_invalid_train_request_names_field(stack: Stack, body: dict, loc: list):
    jobs_before = len(stack.http.get("/v1/jobs").json()["jobs"])

    response = stack.http.post("/v1/jobs/train", json={"dataset": "adgen_sample", **body})

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [loc]
    assert len(stack.http.get("/v1/jobs").json()["jobs"]) == jobs_before


def test_unknown_dataset_lists_registered(stack: Stack):
    response = stack.http.post("/v1/jobs/train", json={"dataset": "no_such_dataset"})

    assert "adgen_sample" in response.json()["detail"][0]["msg"]


def test_invalid_eval_request(stack: Stack):
    response = stack.http.post("/v1/jobs/eval", json={"dataset": "no_such_dataset"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "dataset"]

    unknown = stack.http.post("/v1/jobs/eval", json={**TINY_EVAL, "train_job_id": "0" * 32})
    assert unknown.status_code == 404, unknown.text


def test_unknown_job_is_404(stack: Stack):
    for method, path in [
        ("GET", "/v1/jobs/" + "0" * 32),
        ("DELETE", "/v1/jobs/" + "0" * 32),
        ("POST", "/v1/jobs/" + "0" * 32 + "/resume"),
        ("GET", "/v1/jobs/" + "0" * 32 + "/events"),
        ("GET", "/v1/jobs/not-a-job-id"),
    ]:
        assert stack.http.request(method, path).status_code == 404, (method, path)


def test_bad_last_event_id_names_header(stack: Stack):
    response = stack.http.get("/v1/jobs/" + "0" * 32 + "/events", headers={"Last-Event-ID": "yesterday"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]
