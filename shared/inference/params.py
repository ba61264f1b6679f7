"""Per-request decoding settings, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings of one request; the API validates the same bounds in its request schemas."""

    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 < self.temperature <= 2:
            raise ValueError(f"temperature must be in (0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
