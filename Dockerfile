# herd's container image: `herd replica` by default, `herd gateway ...` by changing the command.
#
#   docker build -t herd:cpu .                                   # CPU torch wheel
#   docker build -t herd:cuda --build-arg FLAVOUR=cuda .         # CUDA torch wheel, CUDA base
#   docker run -p 8000:8000 -v /path/to/model:/models/model:ro herd:cpu
#   docker run -p 8000:8000 herd:cpu gateway --host 0.0.0.0 --upstream http://replica:8000
#
# Weights are never baked in: mount a model directory (or .gguf) at /models/model, or a Hugging
# Face cache at /cache/huggingface (HF_HOME) and point --model at a snapshot directory in it.
# Base images are pinned to exact tags; pin digests too (`@sha256:...`) in your registry mirror.

# cpu or cuda: chooses the runtime base below and the torch wheel index.
ARG FLAVOUR=cpu
ARG TORCH_VERSION=2.13.0

# --- runtime bases, one per flavour: Python 3.12, nothing else ---
FROM python:3.12.11-slim-bookworm AS base-cpu
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu

# CUDA's user-space libraries come with the torch wheel (nvidia-* wheels); the base brings
# the CUDA runtime layout the NVIDIA container toolkit expects, and the driver comes from the node.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS base-cuda
# The torch wheel's CUDA build; it must match what the node's driver supports.
ARG CUDA_WHEEL=cu128
ENV TORCH_INDEX=https://download.pytorch.org/whl/${CUDA_WHEEL}
# Security updates follow the (pinned) base's repository, so packages are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The stage named by FLAVOUR (one of the two above, both pinned); hadolint cannot see through the ARG.
# hadolint ignore=DL3006
FROM base-${FLAVOUR} AS runtime

# --- build: a virtual environment with torch and herd (compilers may live here, never below) ---
FROM runtime AS build
ARG TORCH_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/herd/venv
ENV PATH=/opt/herd/venv/bin:$PATH
# torch first, from the flavour's index, so pip never resolves another build of it.
RUN pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

# --- final image: the venv, a non-root user, no compilers, no weights ---
FROM runtime AS final
ARG FLAVOUR
LABEL org.opencontainers.image.title="herd" \
      org.opencontainers.image.description="herd replica / gateway (${FLAVOUR})"
RUN groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --home-dir /home/herd --create-home herd \
    && mkdir -p /models /cache/huggingface \
    && chown herd:herd /cache/huggingface
COPY --from=build /opt/herd/venv /opt/herd/venv
ENV PATH=/opt/herd/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    PYTHONUNBUFFERED=1 \
    HERD_PORT=8000
VOLUME ["/models", "/cache/huggingface"]
USER 10001:10001
WORKDIR /home/herd
EXPOSE 8000
# Liveness only (/health); readiness (/ready) is the orchestrator's business. The replica and the
# gateway both answer /health on their port; HERD_PORT follows --port when you change it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HERD_PORT', '8000') + '/health', timeout=4)"]
ENTRYPOINT ["herd"]
CMD ["replica", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000"]
