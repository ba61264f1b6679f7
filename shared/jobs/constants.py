"""Queue names, job functions, timeouts, TTLs and Redis keys of the job system, in one place."""

from __future__ import annotations

from typing import Final

TRAIN_QUEUE: Final = "train"
EVAL_QUEUE: Final = "eval"
# A job's type is the name of the queue it runs on.
JOB_TYPES = (TRAIN_QUEUE, EVAL_QUEUE)

# Job functions are named by path, so neither the API nor the worker's parent process imports torch.
TRAIN_JOB_FUNCTION = "shared.jobs.tasks.train_job"
EVAL_JOB_FUNCTION = "shared.jobs.tasks.eval_job"
# Runs in the work process when a job raises, and in the reaper when a job's worker stopped heartbeating.
FAILURE_CALLBACK = "shared.jobs.failures.on_job_failure"

# Defaults of TRAIN_JOB_TIMEOUT and EVAL_JOB_TIMEOUT (seconds). Estimates, not measurements: a 9B
# model may need many hours for an ADGEN epoch on one GPU, so a day stops a hung job without cutting
# a real run, and generating for the whole dev split takes far less.
DEFAULT_TRAIN_JOB_TIMEOUT = 24 * 3600
DEFAULT_EVAL_JOB_TIMEOUT = 6 * 3600
# Finished jobs stay readable for a month; their adapters and results outlive them on the volumes.
RESULT_TTL = 30 * 24 * 3600
# Failed jobs stay as long, so a user back from a weekend can still read the error and resume.
FAILURE_TTL = 30 * 24 * 3600
# Maximum automatic retries a request may set. Each retry resumes from the newest checkpoint.
MAX_RETRIES = 5

# The worker's parent heartbeats this often (seconds) while its work process runs a job.
JOB_MONITORING_INTERVAL = 5
# A started job is abandoned once its worker missed heartbeats for this long past the interval
# (seconds). rq's own margin is 60 s, too long to fail a job within a minute with the reaper below.
HEARTBEAT_GRACE = 15
# How often the API looks for abandoned started jobs (seconds).
REAPER_INTERVAL = 10
# An idle worker wakes from its blocking dequeue every WORKER_TTL - 15 seconds to heartbeat (rq:
# 420 s). It then also cleans its queue's registries, failing abandoned jobs, if
# WORKER_MAINTENANCE_INTERVAL seconds passed since the last time (rq: 10 minutes). Both are short so
# that workers fail a dead worker's job within minutes even while no API runs.
WORKER_TTL = 60
WORKER_MAINTENANCE_INTERVAL = 60

# A job's run lock expires this long (seconds) after its work process stopped refreshing it.
RUN_LOCK_TTL = 30
# The work process refreshes its run lock this often (seconds), well inside the TTL.
RUN_LOCK_REFRESH = 10

# Events kept per job stream, about two per training step. Redis trims older ones approximately
# (MAXLEN ~), so a client that reconnects after a trimmed id resumes from the oldest event kept.
EVENTS_MAXLEN = 5000
# One blocking read of the event stream waits at most this long (milliseconds) before the job's
# status is checked again.
EVENTS_BLOCK_MS = 5000

# Keys of the job system next to rq's own, where `{id}` is the job id.
JOB_INDEX_KEY = "adgen:jobs"
JOB_STATE_KEY = "adgen:job:{id}:state"
JOB_EVENTS_KEY = "adgen:job:{id}:events"
JOB_CANCEL_KEY = "adgen:job:{id}:cancel"
JOB_LOCK_KEY = "adgen:job:{id}:lock"

# Pub/sub channel on which a finished serve follow-up (or POST /v1/models/load) announces the
# folder the API should switch to; the message is JSON {"path": "...", "name": "..."}.
MODEL_RELOAD_CHANNEL = "adgen:models:reload"
