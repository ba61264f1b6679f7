"""Bodies and responses of the /v1/jobs routes.

The training body is `TrainOptions` itself, the options of `adgen train` that a remote user may set,
with the same names, defaults and bounds, plus the follow-ups. It has no path field: the service
chooses every folder, and unknown fields such as `output_dir` are rejected (422).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from shared.hparams import EvalOptions, TrainOptions
from shared.jobs.client import JobStatusName, JobType
from shared.jobs.constants import MAX_RETRIES

BASE_MODEL_HELP = (
    "Base model: tiny-glm, tiny-glm4, the server's BASE_MODEL or the name of a model folder on the "
    "models volume; default BASE_MODEL."
)


class TrainJobCreate(TrainOptions):
    """Body of POST /v1/jobs/train."""

    model_name_or_path: str | None = Field(None, description=BASE_MODEL_HELP)
    eval: EvalOptions | None = Field(
        None, description="Evaluate the adapter with these options once training finishes (a new eval job)."
    )
    merge: bool = Field(False, description="Merge the adapter into its base model once training finishes.")
    serve: bool = Field(False, description="Merge, then switch the API to the merged model; implies merge.")
    retries: int = Field(
        0,
        ge=0,
        le=MAX_RETRIES,
        description="Automatic reruns after a failure, each from the newest checkpoint.",
    )

    @model_validator(mode="after")
    def _serve_implies_merge(self) -> TrainJobCreate:
        if self.serve:
            self.merge = True
        return self

    def to_spec(self) -> dict[str, Any]:
        """Return the JSON-safe job spec that the training job function reads."""
        return {
            "options": self.model_dump(include=set(TrainOptions.model_fields)),
            "model_name_or_path": self.model_name_or_path,
            "eval": self.eval.model_dump() if self.eval else None,
            "merge": self.merge,
            "serve": self.serve,
        }


class EvalJobCreate(EvalOptions):
    """Body of POST /v1/jobs/eval: evaluate a base model, or the adapter of a finished training job."""

    train_job_id: str | None = Field(
        None, description="Training job whose adapter to evaluate; without it the base model is evaluated."
    )
    model_name_or_path: str | None = Field(
        None, description=BASE_MODEL_HELP + " With train_job_id: that job's base model."
    )

    def to_spec(self, model_name_or_path: str | None) -> dict[str, Any]:
        return {
            "options": self.model_dump(include=set(EvalOptions.model_fields)),
            "model_name_or_path": model_name_or_path,
            "train_job_id": self.train_job_id,
        }


class JobProgress(BaseModel):
    """Latest progress of a running job; training and evaluation fill different fields."""

    step: int | None = Field(None, description="Optimizer steps done, counting those before a resume.")
    total_steps: int | None = Field(None, description="Optimizer steps of the whole training.")
    epoch: float | None = Field(None, description="Passes over the training data done, fractional.")
    loss: float | None = Field(None, description="Training loss of the latest logging step.")
    learning_rate: float | None = Field(None, description="Learning rate of the latest logging step.")
    samples_done: int | None = Field(None, description="Training samples or evaluation prompts done.")
    total_samples: int | None = Field(None, description="Evaluation prompts in all.")
    elapsed_seconds: float | None = Field(None, description="Seconds since this run of the job started.")
    remaining_seconds: float | None = Field(
        None, description="Estimated seconds left; null before the first step."
    )


class JobError(BaseModel):
    type: str = Field(description="Error class, e.g. WorkerDied, JobTimeout or DatasetError.")
    message: str = Field(description="What failed and what to do next.")


class JobCreated(BaseModel):
    id: str
    type: JobType
    status: JobStatusName
    url: str = Field(description="Path of this job's status.")


class JobPublic(BaseModel):
    id: str
    type: JobType
    status: JobStatusName
    url: str = Field(description="Path of this job's status.")
    events_url: str = Field(description="Path of this job's server-sent events.")
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = Field(None, description="Set once the job is finished, failed or canceled.")
    cancel_requested: bool = Field(
        False, description="A started job was asked to stop after its current step."
    )
    progress: JobProgress | None = None
    follow_ups: dict[str, Any] = Field(
        default_factory=dict, description="eval_job_id, merged_dir and served, as each follow-up happens."
    )
    result: dict[str, Any] | None = Field(
        None, description="Output folder, metrics and follow-ups of a finished (or canceled) job."
    )
    error: JobError | None = Field(None, description="Why a failed job failed.")


class JobList(BaseModel):
    jobs: list[JobPublic]
