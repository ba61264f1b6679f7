"""Training and evaluation arguments, declared once for the CLI, the jobs API and the workers.

The names and meanings follow ChatGLM-Efficient-Tuning (now LLaMA-Factory) and Hugging Face
`TrainingArguments`, so the published ADGEN commands run unchanged. Divergences from those tools:

- `group_by_length` defaults to true: batches of similar length waste less compute on padding.
- `lora_alpha` defaults to twice `lora_rank`, the usual scaling, when it is not given.
- `--overwrite_cache` and `--ddp_find_unused_parameters` are accepted for compatibility; datasets are
  tokenized in memory, so there is no cache to overwrite.

`TrainOptions` and `EvalOptions` hold what a remote user may set; `TrainArgs` and `EvalArgs` add the
paths that only a local command line may choose.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ADGEN_SOURCE_PREFIX = "你现在是一名销售员，根据以下商品标签生成一段有吸引力的商品广告词。"

SchedulerName = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


class DataOptions(BaseModel):
    """Data selection and prompt-building options."""

    model_config = ConfigDict(extra="forbid")

    source_prefix: str | None = Field(
        None, max_length=2000, description="Text put before each prompt, as in the original ADGEN commands."
    )
    max_source_length: int = Field(512, ge=8, le=32768, description="Maximum prompt length in tokens.")
    max_target_length: int = Field(512, ge=1, le=32768, description="Maximum response length in tokens.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many rows of each dataset.")
    strict: bool = Field(False, description="Stop at the first invalid dataset line instead of skipping it.")
    overwrite_cache: bool = Field(False, description="Accepted for compatibility; nothing is cached.")


class TrainOptions(DataOptions):
    """Fine-tuning options that a remote user may set through the jobs API."""

    dataset: str = Field("adgen_train", description="Registered dataset names, comma-separated.")
    finetuning_type: Literal["lora", "full"] = Field(
        "lora", description="Train a LoRA adapter or all weights."
    )
    lora_rank: int = Field(8, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA scaling numerator; default 2 x lora_rank.")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout applied to the LoRA input.")
    lora_target: str | None = Field(
        None,
        description="Module names that get LoRA, comma-separated; default: every linear layer but the head.",
    )
    per_device_train_batch_size: int = Field(8, ge=1, le=4096, description="Samples per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Steps summed per update.")
    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak learning rate.")
    num_train_epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many updates; -1 uses num_train_epochs.")
    lr_scheduler_type: SchedulerName = Field("linear", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Updates of linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    logging_steps: int = Field(10, ge=1, description="Updates between log lines.")
    save_steps: int = Field(500, ge=1, description="Updates between checkpoints.")
    save_total_limit: int | None = Field(None, ge=1, description="Keep at most this many checkpoints.")
    seed: int = Field(42, ge=0, description="Random seed of initialisation, shuffling and dropout.")
    fp16: bool = Field(
        False, description="Mixed precision in float16; falls back to float32 where unsupported."
    )
    bf16: bool = Field(
        False, description="Mixed precision in bfloat16; falls back to float32 where unsupported."
    )
    plot_loss: bool = Field(False, description="Save training_loss.png next to the adapter.")
    group_by_length: bool = Field(True, description="Batch samples of similar length to cut padding.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    ddp_find_unused_parameters: bool | None = Field(
        None, description="Passed to DistributedDataParallel under `accelerate launch`."
    )


class TrainArgs(TrainOptions):
    """All `adgen train` options: the remote ones plus local paths and mode flags."""

    do_train: bool = Field(
        False, description="Run training; accepted for compatibility, `adgen train` trains."
    )
    output_dir: str = Field("adgen_lora", description="Folder of the adapter, logs and checkpoints.")
    overwrite_output_dir: bool = Field(False, description="Train from scratch even if checkpoints exist.")
    model_name_or_path: str | None = Field(
        None, description="Base model: tiny-glm, tiny-glm4, a folder or a hub id; default BASE_MODEL."
    )
    dataset_dir: str | None = Field(None, description="Folder of dataset_info.json; default DATA_DIR.")
    resume_from_checkpoint: str | None = Field(
        None, description="Checkpoint folder to resume from, or `true` for the newest in output_dir."
    )
    disable_tqdm: bool | None = Field(
        None, description="Hide the progress bar; default: hide when not a terminal."
    )


class EvalOptions(DataOptions):
    """Evaluation options that a remote user may set through the jobs API."""

    dataset: str = Field("adgen_dev", description="Registered dataset names, comma-separated.")
    per_device_eval_batch_size: int = Field(8, ge=1, le=1024, description="Prompts generated together.")
    max_new_tokens: int = Field(512, ge=1, le=8192, description="Tokens generated at most per prompt.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding (greedy is reproducible).")
    temperature: float = Field(0.95, gt=0, le=2, description="Sampling temperature, with do_sample.")
    top_p: float = Field(0.7, gt=0, le=1, description="Nucleus sampling mass, with do_sample.")
    seed: int = Field(42, ge=0, description="Random seed of sampling.")
    predict_with_generate: bool = Field(
        True, description="Accepted for compatibility; eval always generates."
    )


class EvalArgs(EvalOptions):
    """All `adgen eval` options: the remote ones plus local paths and mode flags."""

    do_eval: bool = Field(False, description="Accepted for compatibility; `adgen eval` evaluates.")
    do_predict: bool = Field(False, description="Accepted for compatibility; `adgen eval` predicts.")
    checkpoint_dir: str | None = Field(None, description="LoRA adapter folder; without it the base model.")
    output_dir: str = Field("adgen_results", description="Folder of generated_predictions.jsonl and results.")
    model_name_or_path: str | None = Field(
        None, description="Base model: tiny-glm, tiny-glm4, a folder or a hub id; default BASE_MODEL."
    )
    dataset_dir: str | None = Field(None, description="Folder of dataset_info.json; default DATA_DIR.")
    fp16: bool = Field(False, description="Run the model in float16 where supported.")
    bf16: bool = Field(False, description="Run the model in bfloat16 where supported.")
