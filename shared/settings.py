"""Settings of every service, read from the environment and an optional `.env` file.

This is the only module that reads the environment. Each service takes the one `Settings` object
from `get_settings()`; `.env.example` lists exactly these fields.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.jobs.constants import DEFAULT_EVAL_JOB_TIMEOUT, DEFAULT_TRAIN_JOB_TIMEOUT

TINY_MODEL_NAME = "tiny-glm"


class Settings(BaseSettings):
    """Configuration shared by the API, the trainer worker and the evaluator worker."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis connection URL of the job queue.")
    volumes_dir: Path = Field(
        Path("volumes"), description="Root of the models, adapters, merged and results folders."
    )
    data_dir: Path = Field(Path("data"), description="Folder of dataset_info.json, the dataset registry.")
    base_model: str = Field(
        TINY_MODEL_NAME,
        description="Base model: `tiny-glm`, `tiny-glm4`, a local folder or a Hugging Face hub id.",
    )
    api_key: SecretStr | None = Field(
        None, description="When set, the /v1 routes require `Authorization: Bearer <key>`."
    )
    served_model: str = Field(
        "",
        description="Model folder the API serves at start-up; empty serves the newest merged model, "
        "else the base model.",
    )
    max_concurrent_streams: int = Field(
        8, ge=1, le=256, description="Generations served at once; more requests get 429."
    )
    max_queued_streams: int = Field(
        16, ge=0, le=1024, description="Requests that may wait for a free generation slot before 429."
    )
    train_job_timeout: int = Field(
        DEFAULT_TRAIN_JOB_TIMEOUT,
        ge=60,
        description="Seconds a training job may run before the worker stops it.",
    )
    eval_job_timeout: int = Field(
        DEFAULT_EVAL_JOB_TIMEOUT,
        ge=60,
        description="Seconds an evaluation job may run before the worker stops it.",
    )
    hf_home: Path | None = Field(None, description="Hugging Face cache folder (HF_HOME).")

    @field_validator("hf_home", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _reject_placeholder_key(cls, value: object) -> object:
        if value == "":
            return None  # `API_KEY=` in .env means no key, as in .env.example.
        if value in {"changeme", "change-me", "changethis"}:
            raise ValueError("API_KEY is a placeholder; set a real secret or leave it empty")
        return value

    @property
    def models_dir(self) -> Path:
        return self.volumes_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.volumes_dir / "adapters"

    @property
    def merged_dir(self) -> Path:
        return self.volumes_dir / "merged"

    @property
    def results_dir(self) -> Path:
        return self.volumes_dir / "results"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once."""
    return Settings()
