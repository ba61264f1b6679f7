"""Sizes of a benchmark run: `FULL` for `make bench`, `QUICK` for a smoke run of every section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Sizes of each section. The defaults are those of `make bench`, sized for 2 CPU cores."""

    stream_prompts: int = 3
    stream_rounds: int = 4
    stream_tokens: int = 128
    concurrency_levels: tuple[int, ...] = (1, 4, 8)
    concurrency_rounds: int = 4
    concurrency_tokens: int = 128
    train_rows: int = 192
    train_batch_size: int = 8
    train_rounds: int = 3
    predict_rows: int = 48
    predict_batch_size: int = 16
    predict_tokens: int = 64  # ADGEN responses average 53 tokens with the tiny model's tokenizer.
    predict_rounds: int = 3
    queue_jobs: int = 8
    queue_steps: int = 2
    warm_up: bool = True

    def describe(self) -> dict[str, str]:
        """Return the sizes as report settings, one line per section."""
        levels = "/".join(map(str, self.concurrency_levels))
        return {
            "streaming": f"{self.stream_prompts} prompts × {self.stream_rounds} rounds, "
            f"{self.stream_tokens} new tokens",
            "concurrency": f"{levels} streams × {self.concurrency_rounds} rounds, "
            f"{self.concurrency_tokens} new tokens each",
            "training": f"{self.train_rows} rows, batch size {self.train_batch_size}, 1 epoch × "
            f"{self.train_rounds} rounds",
            "prediction": f"{self.predict_rows} rows, batch size {self.predict_batch_size} against 1, "
            f"{self.predict_tokens} new tokens, {self.predict_rounds} rounds",
            "queue": f"{self.queue_jobs} jobs of {self.queue_steps} steps",
            "warm-up runs": "yes" if self.warm_up else "no",
        }


FULL = Profile()
QUICK = Profile(
    stream_prompts=1,
    stream_rounds=1,
    stream_tokens=8,
    concurrency_rounds=1,
    concurrency_tokens=8,
    train_rows=8,
    train_rounds=1,
    predict_rows=4,
    predict_batch_size=4,
    predict_tokens=4,
    predict_rounds=1,
    queue_jobs=1,
    queue_steps=1,
    warm_up=False,
)
