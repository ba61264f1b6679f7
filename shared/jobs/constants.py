"""Queue names, job functions, timeouts, TTLs and Redis keys of the job system, in one place."""

from __future__ import annotations

TRAIN_QUEUE = "train"
EVAL_QUEUE = "eval"

# Pub/sub channel on which a finished serve follow-up (or POST /v1/models/load) announces the
# folder the API should switch to; the message is JSON {"path": "...", "name": "..."}.
MODEL_RELOAD_CHANNEL = "adgen:models:reload"
