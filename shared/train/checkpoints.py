"""The `checkpoint-<step>` folders that `Trainer` writes every `--save_steps`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

# Written last into each checkpoint folder by transformers' Trainer (transformers 5.x), so a folder
# without it was cut short by a kill during the save and cannot be resumed from.
TRAINER_STATE = "trainer_state.json"


def checkpoint_folders(output_dir: Path) -> dict[int, Path]:
    """Map each `checkpoint-<step>` folder in `output_dir` to its step."""
    folders = {}
    for folder in Path(output_dir).glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if folder.is_dir() and step.isdigit():
            folders[int(step)] = folder
    return folders


def latest_checkpoint_step(output_dir: Path) -> int | None:
    """Return the step of the newest complete checkpoint, or None without one."""
    complete = [
        step for step, folder in checkpoint_folders(output_dir).items() if (folder / TRAINER_STATE).is_file()
    ]
    return max(complete, default=None)


def newest_complete_checkpoint(output_dir: Path) -> Path | None:
    step = latest_checkpoint_step(output_dir)
    return None if step is None else checkpoint_folders(output_dir)[step]


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete checkpoint folders that a killed run left half-written, so a resume uses a complete one."""
    for step, folder in checkpoint_folders(output_dir).items():
        if not (folder / TRAINER_STATE).is_file():
            logger.warning("removing checkpoint-%d in %s: it was not completely written", step, output_dir)
            shutil.rmtree(folder)
