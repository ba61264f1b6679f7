# One image for the API, the trainer worker and the evaluator worker.
#
#   docker build -t adgen-stack:latest .                                 # CUDA torch from the PyTorch image
#   docker build --build-arg TORCH_VARIANT=cpu -t adgen-stack:cpu .      # CPU torch on python:3.11-slim
#
# torch is not a dependency in pyproject.toml, so each variant brings its own build of it, and the
# dependency install below is constrained to that torch version, so pip fails instead of
# replacing it.

ARG TORCH_VARIANT=cuda
ARG CUDA_BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
ARG CPU_BASE_IMAGE=python:3.11-slim

FROM ${CUDA_BASE_IMAGE} AS torch-cuda

FROM ${CPU_BASE_IMAGE} AS torch-cpu
ARG TORCH_CPU_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_CPU_VERSION}" --index-url https://download.pytorch.org/whl/cpu

# The stage name is built from TORCH_VARIANT, which hadolint reads as an untagged image.
# hadolint ignore=DL3006
FROM torch-${TORCH_VARIANT}

ARG APP_UID=10001

ENV PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOLUMES_DIR=/volumes \
    DATA_DIR=/app/data \
    HF_HOME=/hf-cache

WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so editing the source reuses this layer.
COPY pyproject.toml ./
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-constraint.txt \
    || { echo "torch is not installed in the base image; build with TORCH_VARIANT=cuda or TORCH_VARIANT=cpu" >&2; exit 1; } \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/torch-constraint.txt \
    && rm /tmp/requirements.txt /tmp/torch-constraint.txt

COPY shared ./shared
COPY services ./services
COPY data ./data
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info

# The named volumes of docker-compose.yml mount over these folders. An empty named volume takes
# the owner of the folder it mounts over, so the non-root user can write to it. /app stays owned
# by root, so the running services cannot change their own code.
RUN groupadd --gid "${APP_UID}" adgen \
    && useradd --create-home --uid "${APP_UID}" --gid adgen adgen \
    && mkdir -p /volumes/models /volumes/adapters /volumes/merged /volumes/results /hf-cache \
    && chown -R adgen:adgen /volumes /hf-cache
# Numeric, so a runtime can check that the user is not root without reading /etc/passwd.
USER ${APP_UID}:${APP_UID}

# CUDA and rq workers: `adgen worker` runs each job in a fresh work process that rq's SpawnWorker
# starts with posix_spawn. The worker's parent process never imports torch, so it holds no CUDA
# context, and each job loads the model and initialises CUDA in its own process, whose exit frees
# the GPU memory of a finished or failed job.
EXPOSE 8000
CMD ["adgen", "serve", "--host", "0.0.0.0", "--port", "8000"]
