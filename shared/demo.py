"""`make demo`: the product's main job on the bundled sample, end to end, over HTTP.

It starts the local stack, submits a LoRA training job with evaluation, merge and serve follow-ups,
shows a progress bar, evaluates the untuned base model beside it, streams an ad from /generate,
prints the metrics table and stops the stack.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import httpx
from tqdm import tqdm

from shared.devstack import LocalStack, free_port
from shared.hparams import ADGEN_SOURCE_PREFIX
from shared.settings import get_settings

logger = logging.getLogger(__name__)

DEMO_TAGS = "类型#裙*颜色#粉红色*图案#条纹*裙长#连衣裙"
EVAL_OPTIONS = {
    "dataset": "adgen_sample",
    "max_samples": 16,
    "max_new_tokens": 96,
    "per_device_eval_batch_size": 8,
    "source_prefix": ADGEN_SOURCE_PREFIX,
}
TRAIN_BODY = {
    "dataset": "adgen_sample",
    "finetuning_type": "lora",
    "lora_rank": 32,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-3,
    "lr_scheduler_type": "cosine",
    "max_steps": 150,
    "logging_steps": 5,
    "save_steps": 50,
    "source_prefix": ADGEN_SOURCE_PREFIX,
    "eval": EVAL_OPTIONS,
    "serve": True,
}
JOB_TIMEOUT_SECONDS = 900
TERMINAL_STATUSES = {"finished", "failed", "canceled"}


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and the cause."""


def wait_for_job(client: httpx.Client, job_id: str, label: str, stack: LocalStack) -> dict[str, Any]:
    """Poll a job until it ends, drawing a progress bar over its steps or samples."""
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    with tqdm(desc=label, unit="step", file=sys.stdout, dynamic_ncols=True) as bar:
        while time.monotonic() < deadline:
            stack.raise_if_exited()
            job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            progress = job.get("progress") or {}
            total = progress.get("total_steps") or progress.get("total_samples")
            done = progress.get("step") or progress.get("samples_done") or 0
            if total and bar.total != total:
                bar.total = total
            bar.n = done
            if progress.get("loss") is not None:
                bar.set_postfix(loss=f"{progress['loss']:.3f}")
            bar.refresh()
            if job["status"] in TERMINAL_STATUSES:
                if job["status"] != "finished":
                    raise DemoError(f"{label} job {job_id} is {job['status']}: {job.get('error')}")
                return job
            time.sleep(0.5)
    raise DemoError(f"{label} job {job_id} did not end within {JOB_TIMEOUT_SECONDS}s")


def wait_for_follow_up(client: httpx.Client, job_id: str, key: str, stack: LocalStack) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stack.raise_if_exited()
        value = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()["follow_ups"].get(key)
        if value:
            return value
        time.sleep(0.5)
    raise DemoError(f"follow-up {key!r} of job {job_id} did not happen within {JOB_TIMEOUT_SECONDS}s")


def wait_for_served_model(client: httpx.Client, merged_dir: str, stack: LocalStack) -> str:
    """Wait until the API serves the merged folder; returns the served model's id."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        stack.raise_if_exited()
        response = client.get("/v1/models")
        if response.status_code == 200:
            for model in response.json()["data"]:
                if model.get("path") == merged_dir or merged_dir.endswith(model["id"]):
                    return model["id"]
        time.sleep(0.5)
    raise DemoError(f"the API did not switch to {merged_dir} within 300s")


def stream_ad(client: httpx.Client, content: str) -> str:
    """Print the ad copy as /generate streams it; returns the full text."""
    body = {"content": content, "max_new_tokens": 128}
    text = ""
    with client.stream("POST", "/generate", json=body, timeout=120) as response:
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "token":
                delta = json.loads(line.partition(":")[2])["text"]
                text += delta
                print(delta, end="", flush=True)
            elif line.startswith("data:") and event == "error":
                raise DemoError(f"/generate failed: {line.partition(':')[2].strip()}")
    print()
    return text


def metrics_table(columns: dict[str, dict[str, Any]]) -> str:
    """Format results as the published ADGEN table: metrics as rows, one column per model."""
    rows = [("BLEU-4", "predict_bleu-4"), ("Rouge-1", "predict_rouge-1"), ("Rouge-2", "predict_rouge-2"),
            ("Rouge-l", "predict_rouge-l"), ("Loss", "eval_loss")]  # fmt: skip
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, key in rows:
        values = [columns[name].get(key) for name in columns]
        cells = ["-" if value is None else f"{value:.2f}" for value in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(stack: LocalStack) -> None:
    client = httpx.Client(base_url=stack.api_url, timeout=30)
    print(f"\n==> API is up at {stack.api_url} (playground: {stack.api_url}/)")
    train = client.post("/v1/jobs/train", json=TRAIN_BODY).raise_for_status().json()
    original = client.post("/v1/jobs/eval", json=EVAL_OPTIONS).raise_for_status().json()
    print(f"==> submitted training job {train['id']} and an evaluation of the base model {original['id']}")

    wait_for_job(client, train["id"], "train", stack)
    eval_job_id = wait_for_follow_up(client, train["id"], "eval_job_id", stack)
    lora = wait_for_job(client, eval_job_id, "eval LoRA", stack)
    base = wait_for_job(client, original["id"], "eval Original", stack)
    merged_dir = wait_for_follow_up(client, train["id"], "merged_dir", stack)
    served = wait_for_served_model(client, merged_dir, stack)

    print(f"\n==> streaming an ad from {served} for {DEMO_TAGS}:\n")
    stream_ad(client, DEMO_TAGS)
    print("\n==> ADGEN metrics on the bundled sample (the tiny model learns from 56 lines only):\n")
    print(metrics_table({"Original": base["result"]["metrics"], "LoRA": lora["result"]["metrics"]}))


def main(argv: list[str] | None = None) -> int:
    from shared.logs import setup_logging

    setup_logging(logging.WARNING)
    settings = get_settings()
    log_file = settings.volumes_dir / "logs" / "demo.log"
    stack = LocalStack(settings, free_port(), log_file=log_file)
    try:
        with stack:
            stack.wait_ready()
            run_demo(stack)
    except (DemoError, RuntimeError, TimeoutError, httpx.HTTPError) as error:
        print(f"\nmake demo: failed: {error}\nThe services' logs are in {log_file}", file=sys.stderr)
        return 1
    print(f"\n==> demo finished; the stack is stopped (service logs: {log_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
