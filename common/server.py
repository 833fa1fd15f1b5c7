"""Starting a gRPC server with health, reflection and metrics, the same way in every service."""
import logging
import signal
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .metrics import MetricsInterceptor, start_metrics_server

log = logging.getLogger(__name__)

_SHUTDOWN_GRACE_SECONDS = 30.0


class Server:
    """A gRPC server whose health stays NOT_SERVING until `mark_serving()` (after the model loads).

    Servicers are added between construction and `start()`."""

    def __init__(self, service: str, service_names: list[str], *, host: str, port: int, max_workers: int,
                 metrics_port: int):
        self.service_names = service_names
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=service),
            interceptors=[MetricsInterceptor(service)],
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024),
                     # Clients reconnect now and then, so round-robin over a headless Service finds
                     # new replicas; the grace period lets the longest request finish first.
                     ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                     ("grpc.max_connection_age_grace_ms", 15 * 60 * 1000)],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.grpc,
        )
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind {host}:{port}")
        self._description = (service, host, metrics_port)

    def start(self) -> None:
        service, host, metrics_port = self._description
        start_metrics_server(metrics_port)
        self.grpc.start()
        log.info("%s listening on %s:%d (metrics on %s)", service, host, self.port, metrics_port or "off")

    def _set_status(self, status) -> None:
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def mark_serving(self) -> None:
        self._set_status(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc.stop(grace).wait()

    def wait(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain: health goes NOT_SERVING, running calls get a grace period."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop(_SHUTDOWN_GRACE_SECONDS))
        try:
            self.grpc.wait_for_termination()
        except KeyboardInterrupt:
            self.stop(_SHUTDOWN_GRACE_SECONDS)
