"""Prometheus exposition shared by the services: the /metrics endpoint, build info, gRPC
handling counters (as an interceptor) and accelerator gauges."""
import time

import grpc
import prometheus_client
from prometheus_client.core import GaugeMetricFamily

VERSION = "0.1.0"

GRPC_HANDLED = prometheus_client.Counter(
    "specrej_grpc_server_handled_total", "RPCs completed, by method and gRPC status code.",
    ["service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = prometheus_client.Histogram(
    "specrej_grpc_server_handling_seconds", "Time from an RPC's start to its last message.",
    ["service", "grpc_method"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
BUILD_INFO = prometheus_client.Gauge(
    "specrej_build_info", "Always 1; labels say what is running.", ["service", "model", "dtype", "device", "version"]
)


def start_metrics_server(port: int) -> None:
    if port:
        prometheus_client.start_http_server(port)


def set_build_info(service: str, model: str, dtype: str = "", device: str = "") -> None:
    BUILD_INFO.labels(service=service, model=model, dtype=dtype, device=device, version=VERSION).set(1)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every RPC by final status code and times it, streams included."""

    def __init__(self, service: str):
        self.service = service

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def finish(context, began, failed: bool):
            code = context.code()
            if code is None:
                if not failed:
                    code = grpc.StatusCode.OK
                elif context.is_active():
                    code = grpc.StatusCode.UNKNOWN
                elif (context.time_remaining() is not None) and context.time_remaining() <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                else:
                    code = grpc.StatusCode.CANCELLED
            GRPC_HANDLED.labels(self.service, method, code.name).inc()
            GRPC_SECONDS.labels(self.service, method).observe(time.perf_counter() - began)

        def unary_response(behavior):
            def wrapped(request, context):
                began, failed = time.perf_counter(), True
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    finish(context, began, failed)
            return wrapped

        def stream_response(behavior):
            def wrapped(request, context):
                began, failed = time.perf_counter(), True
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    finish(context, began, failed)
            return wrapped

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_response(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_response(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary_response(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            stream_response(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


class DeviceCollector:
    """Accelerator memory from torch and utilisation from NVML, read at scrape time (CUDA only)."""

    def __init__(self, service: str, device):
        self.service, self.device = service, device
        self._nvml_handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception:  # NVML is optional: no driver library, no GPU, or no nvidia-ml-py.
            self._nvml_handle = None

    def collect(self):
        import torch

        label = str(self.device)
        allocated = GaugeMetricFamily("specrej_device_memory_allocated_bytes", "Accelerator memory held by tensors.",
                                      labels=["service", "device"])
        reserved = GaugeMetricFamily("specrej_device_memory_reserved_bytes", "Accelerator memory reserved by the allocator.",
                                     labels=["service", "device"])
        allocated.add_metric([self.service, label], torch.cuda.memory_allocated(self.device))
        reserved.add_metric([self.service, label], torch.cuda.memory_reserved(self.device))
        yield allocated
        yield reserved
        if self._nvml_handle is not None:
            utilisation = GaugeMetricFamily("specrej_gpu_utilization_ratio", "GPU busy fraction over the last sample period (NVML).",
                                            labels=["service", "device"])
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._nvml_handle)
            utilisation.add_metric([self.service, label], rates.gpu / 100.0)
            yield utilisation


def register_device_metrics(service: str, device) -> None:
    if device.type == "cuda":
        prometheus_client.REGISTRY.register(DeviceCollector(service, device))
