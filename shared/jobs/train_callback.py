"""The trainer callback of training jobs: a progress event per optimizer step, and cancellation.

Progress is sent after each optimizer step with the loss and learning rate of the latest logging
step, and once more when a logging step brings a new loss. A cancel request is checked after each
optimizer step: training then stops there and saves a checkpoint of that step, so a resume
continues from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from shared.jobs.progress import JobReporter
from shared.train.callbacks import progress_record


class JobTrainerCallback(TrainerCallback):
    """Publish progress through `reporter` and stop training once `cancel_requested()` is true."""

    def __init__(self, reporter: JobReporter, cancel_requested: Callable[[], bool]):
        self.reporter = reporter
        self.cancel_requested = cancel_requested
        self.canceled = False
        self.started = time.time()
        self.first_step = 0
        self.last_logs: dict = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.started = time.time()
        self.first_step = state.global_step
        self._publish(args, state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._publish(args, state)
        if not self.canceled and self.cancel_requested():
            self.canceled = True
            control.should_training_stop = True
            control.should_save = True
            self.reporter.log(f"cancel requested: saving checkpoint-{state.global_step} and stopping")
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        if logs and "loss" in logs:
            self.last_logs = {"loss": logs["loss"], "learning_rate": logs.get("learning_rate")}
            self._publish(args, state)

    def _publish(self, args: TrainingArguments, state: TrainerState) -> None:
        record = progress_record(state, self.last_logs, self.started, self.first_step)
        samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        record["samples_done"] = state.global_step * samples_per_step
        self.reporter.progress(record)
