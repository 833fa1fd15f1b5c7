# syntax=docker/dockerfile:1
# The coordinator: the public gRPC API. It needs no torch, so its image is small. Build from the
# repository root:
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t specrej/coordinator:0.1.0 .
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Stage 1: generate the gRPC code (grpcio-tools stays out of the final image).
FROM ${BASE_IMAGE} AS protos
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt /tmp/requirements.txt
RUN set -eux; \
    grep -E '^(grpcio-tools|protobuf)([<>=!~ ;[]|$)' /tmp/requirements.txt > /tmp/build.txt; \
    pip install -r /tmp/build.txt
COPY protos/ /src/protos/
RUN python -m protos

# Stage 2: the runtime, with the coordinator's dependencies only (versions as requirements.txt).
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    HOME=/tmp
WORKDIR /app
COPY requirements.txt /tmp/requirements.txt
RUN set -eux; \
    grep -E '^(grpcio|grpcio-health-checking|grpcio-reflection|grpcio-status|googleapis-common-protos|protobuf|prometheus-client|cryptography|opentelemetry-api|opentelemetry-sdk|opentelemetry-proto|opentelemetry-exporter-otlp-proto-common|opentelemetry-exporter-otlp-common|opentelemetry-exporter-otlp-proto-grpc|opentelemetry-semantic-conventions|opentelemetry-instrumentation|opentelemetry-instrumentation-grpc)([<>=!~ ;[]|$)' \
        /tmp/requirements.txt > /tmp/runtime.txt; \
    pip install -r /tmp/runtime.txt; \
    rm /tmp/requirements.txt /tmp/runtime.txt; \
    groupadd --gid 10001 specrej; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp specrej
COPY --from=protos /src/specrej/ /app/specrej/
COPY . /app
# Fail the build, not the pod, if the coordinator imports something this image lacks: --help,
# the modules it uses once serving (gRPC, rich error details, metrics, tracing, the TLS health probe), and the `sleep` of the
# Kubernetes preStop hook.
RUN set -eux; \
    python -m coordinator --help > /dev/null; \
    python -c "import grpc, grpc_health.v1.health, grpc_reflection.v1alpha.reflection, grpc_status, prometheus_client, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, opentelemetry.instrumentation.grpc, common.health_probe"; \
    sleep 0

USER 10001:10001
EXPOSE 50050 9100
CMD ["python", "-m", "coordinator"]
