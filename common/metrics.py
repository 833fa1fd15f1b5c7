"""Prometheus exposition shared by the services: the /metrics endpoint, build info, gRPC
handling counters (filled by common.interceptor), admission and accelerator gauges."""
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


ADMISSION_QUEUED = prometheus_client.Gauge(
    "specrej_admission_queued", "Requests waiting to be admitted (for KV-cache memory, a scoring batch, a session).",
    ["service"],
)
ADMISSION_WAIT_SECONDS = prometheus_client.Histogram(
    "specrej_admission_wait_seconds", "Time from a request's arrival to its admission.", ["service"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ADMISSION_REJECTED = prometheus_client.Counter(
    "specrej_admission_rejected_total", "Requests turned away with RESOURCE_EXHAUSTED because the queue was full.",
    ["service"],
)

TLS_CERTIFICATE_EXPIRY = prometheus_client.Gauge(
    "specrej_tls_certificate_expiry_timestamp_seconds",
    "Unix time at which the certificate in use expires (its notAfter), set whenever it is (re)loaded; "
    "role: server = presented to clients, client = presented to upstream services.",
    ["service", "role"],
)


def start_metrics_server(port: int, host: str = "") -> None:
    """Serve /metrics on `host` (a gRPC-style "[::]" works too); port 0 = off."""
    if port:
        prometheus_client.start_http_server(port, addr=host.strip("[]") or "0.0.0.0")


def precreate_rpc_series(service: str, methods: list[str]) -> None:
    """Create every (method, code) series at zero, so rate() and increase() count the first error of
    each kind, and every admission series, so alerts have data from the start."""
    for method in methods:
        for code in grpc.StatusCode:
            GRPC_HANDLED.labels(service, method, code.name)
        GRPC_SECONDS.labels(service, method)
    ADMISSION_QUEUED.labels(service)
    ADMISSION_WAIT_SECONDS.labels(service)
    ADMISSION_REJECTED.labels(service)


def set_build_info(service: str, model: str, dtype: str = "", device: str = "") -> None:
    BUILD_INFO.labels(service=service, model=model, dtype=dtype, device=device, version=VERSION).set(1)


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
