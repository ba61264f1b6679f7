"""Queue latency: from `POST /v1/jobs/train` to the job's first optimizer step, with real rq workers.

Jobs are submitted one at a time, each after the previous one ended, so the figure is the
latency of an idle stack, not time spent queueing behind other jobs. Stage times come
from the job's event stream: each Redis Stream id starts with the server's clock in
milliseconds, on the same machine as the client's clock, so no polling interval blurs them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import httpx

from benchmarks.http_client import REQUEST_TIMEOUT_SECONDS, parse_sse
from benchmarks.report import TITLES, Section
from benchmarks.stats import median, percentile
from benchmarks.workspace import DATASET
from shared.hparams import ADGEN_SOURCE_PREFIX

logger = logging.getLogger(__name__)

JOB_TIMEOUT_SECONDS = 300
POLL_SECONDS = 0.25
IDLE_PAUSE_SECONDS = 1.0  # Lets the worker return to its blocking dequeue before the next job.
TERMINAL = {"finished", "failed", "canceled"}
JOB_ROWS = 16
JOB_BATCH_SIZE = 4


@dataclass(frozen=True)
class JobTimes:
    """Seconds from the POST to each stage of one job."""

    started: float  # The work process runs the job function (`status: started` event).
    train_begin: float  # The Trainer starts its loop (first `progress` event, step 0).
    first_step: float  # The first optimizer step is done (`progress` event with step 1).
    finished: float


def train_body(steps: int) -> dict:
    return {
        "dataset": DATASET,
        "max_samples": JOB_ROWS,
        "max_steps": steps,
        "per_device_train_batch_size": JOB_BATCH_SIZE,
        "logging_steps": 1,
        "save_steps": 1000,
        "source_prefix": ADGEN_SOURCE_PREFIX,
    }


def wait_for_end(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"training job {job_id} did not end within {JOB_TIMEOUT_SECONDS}s")


def read_event_times(client: httpx.Client, job_id: str, posted_at: float) -> JobTimes:
    """Replay a finished job's events and return the stage times relative to `posted_at`."""
    stages: dict[str, float] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        response.raise_for_status()
        for sse in parse_sse(response.iter_lines()):
            if sse.id is None or sse.event not in {"status", "progress"}:
                continue
            when = int(sse.id.split("-", 1)[0]) / 1000  # Stream ids are <milliseconds>-<sequence>.
            data = json.loads(sse.data)
            if sse.event == "status" and data.get("status") in {"started", "finished"}:
                stages.setdefault(data["status"], when)
            elif sse.event == "progress":
                stages.setdefault("train_begin", when)
                if (data.get("step") or 0) >= 1:
                    stages.setdefault("first_step", when)
    missing = {"started", "train_begin", "first_step", "finished"} - set(stages)
    if missing:
        raise RuntimeError(f"job {job_id} has no event for: {', '.join(sorted(missing))}")
    return JobTimes(**{name: value - posted_at for name, value in stages.items()})


def run_job(client: httpx.Client, steps: int) -> JobTimes:
    """Submit one training job, wait for its end and return its stage times."""
    posted_at = time.time()
    response = client.post("/v1/jobs/train", json=train_body(steps))
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs/train returned {response.status_code}: {response.text}")
    job_id = response.json()["id"]
    job = wait_for_end(client, job_id)
    if job["status"] != "finished":
        raise RuntimeError(f"training job {job_id} is {job['status']}: {job.get('error')}")
    return read_event_times(client, job_id, posted_at)


def measure_queue(base_url: str, jobs: int, steps: int, warm_up: bool) -> Section:
    """Run `jobs` tiny training jobs one after another and report their stage latencies."""
    times: list[JobTimes] = []
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        if warm_up:
            run_job(client, steps)
            time.sleep(IDLE_PAUSE_SECONDS)
        for index in range(jobs):
            times.append(run_job(client, steps))
            logger.info("queue job %d: first step after %.2f s", index, times[-1].first_step)
            time.sleep(IDLE_PAUSE_SECONDS)

    stages = [
        ("POST → job started in its work process", [t.started for t in times]),
        ("job started → Trainer loop begins", [t.train_begin - t.started for t in times]),
        ("Trainer loop begins → first step done", [t.first_step - t.train_begin for t in times]),
        ("POST → first step done (total)", [t.first_step for t in times]),
        ("POST → job finished", [t.finished for t in times]),
    ]
    rows = [
        [name, median(values), percentile(values, 95), min(values), max(values)] for name, values in stages
    ]
    setup_share = 100 * median(stages[1][1]) / median(stages[3][1])
    return Section(
        key="queue",
        title=TITLES["queue"],
        measured="Seconds from `POST /v1/jobs/train` to the job's first optimizer step, over tiny "
        "training jobs run by the trainer worker of the local stack (a fresh work process per job).",
        baseline="None: no target was set for this latency. The stages show where the time goes.",
        settings={
            "jobs": jobs,
            "warm-up job": "yes" if warm_up else "no",
            "steps per job": steps,
            "rows per job": JOB_ROWS,
            "batch size": JOB_BATCH_SIZE,
        },
        columns=["stage", "median s", "p95 s", "min s", "max s"],
        rows=rows,
        notes=[
            "Stage times are the Redis Stream ids of the job's `status` and `progress` events (server "
            "clock, milliseconds) minus the client's clock at the POST, both on this machine.",
            f"The stage from job start to the Trainer loop, where the fresh work process imports torch "
            f"and transformers, loads the model and tokenizes the rows, takes {setup_share:.0f}% of the "
            "median total. rq's SpawnWorker pays it per job so that each job starts with fresh GPU memory.",
        ],
        data={"jobs": [t.__dict__ for t in times]},
    )
