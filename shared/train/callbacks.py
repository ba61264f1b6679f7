"""Trainer callbacks: the `trainer_log.jsonl` record, plain log lines, and the loss plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

TRAINER_LOG = "trainer_log.jsonl"
LOSS_PLOT = "training_loss.png"


def progress_record(state: TrainerState, logs: dict, started: float, first_step: int) -> dict:
    """Build one progress entry: step, totals, loss, learning rate, epoch and time estimates."""
    elapsed = time.time() - started
    steps_done = max(state.global_step - first_step, 0)
    remaining_steps = max(state.max_steps - state.global_step, 0)
    remaining = elapsed / steps_done * remaining_steps if steps_done else None
    return {
        "step": state.global_step,
        "total_steps": state.max_steps,
        "loss": logs.get("loss"),
        "learning_rate": logs.get("learning_rate"),
        "epoch": round(state.epoch or 0.0, 4),
        "elapsed_seconds": round(elapsed, 2),
        "remaining_seconds": None if remaining is None else round(remaining, 2),
    }


class TrainerLogCallback(TrainerCallback):
    """Append a JSON line per logging step to trainer_log.jsonl and log it as a plain line."""

    def __init__(self, output_dir: Path, log_lines: bool):
        self.path = Path(output_dir) / TRAINER_LOG
        self.log_lines = log_lines
        self.started = time.time()
        self.first_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.started = time.time()
        self.first_step = state.global_step

    def on_log(self, args, state: TrainerState, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = progress_record(state, logs, self.started, self.first_step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.log_lines:
            logger.info(
                "step %d/%d loss %.4f lr %.3g epoch %.2f remaining %ss",
                record["step"],
                record["total_steps"],
                record["loss"],
                record["learning_rate"] or 0.0,
                record["epoch"],
                record["remaining_seconds"],
            )


def plot_loss(output_dir: Path) -> Path | None:
    """Draw training_loss.png from trainer_log.jsonl; returns None when nothing was logged."""
    log_path = Path(output_dir) / TRAINER_LOG
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if row.get("loss") is not None]
    if not rows:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([row["step"] for row in rows], [row["loss"] for row in rows], marker=".")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(f"training loss of {Path(output_dir).name}")
    axis.grid(alpha=0.3)
    target = Path(output_dir) / LOSS_PLOT
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target
