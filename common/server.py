"""Starting a grpc.aio server with health, reflection, metrics, TLS and draining, the same way in
every service. Streams never pin a thread: servicers are coroutines, and model work runs on each
engine's own thread."""
import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from . import metrics
from .interceptor import ServingInterceptor, ServingState
from .tls import ServerTls
from .tracing import configure_tracing

log = logging.getLogger(__name__)

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Between NOT_SERVING and GOAWAY: time for clients that watch health to stop picking this replica.
# A call that reaches gRPC after its GOAWAY but before the client has read it is cancelled
# (gRPC core's shutdown drops calls no handler has taken yet), so clients are told first.
HEALTH_NOTICE_SECONDS = 1.0


@dataclass(frozen=True)
class ServerOptions:
    """What every service's server takes from its flags (common.flags.add_server_flags)."""

    host: str
    port: int
    metrics_port: int
    metrics_host: str | None = None  # None = host
    tls: ServerTls | None = None
    reflection: bool = False
    drain_grace_seconds: float = 300.0
    otlp_endpoint: str | None = None  # None = no tracing
    max_receive_bytes: int = 64 * 1024 * 1024  # larger requests are refused (RESOURCE_EXHAUSTED) before parsing

    @classmethod
    def from_args(cls, args) -> "ServerOptions":
        return cls(host=args.host, port=args.port, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                   tls=ServerTls.from_args(args), reflection=args.reflection == "on",
                   drain_grace_seconds=args.drain_grace_seconds, otlp_endpoint=args.otlp_endpoint)


class Server:
    """A gRPC server whose health stays NOT_SERVING until `mark_serving()` (after the model loads).

    Servicers are added (to `.grpc`) between construction and `start()`."""

    def __init__(self, service: str, service_names: list[str], options: ServerOptions, interceptors=()):
        self.service, self.service_names, self.options = service, service_names, options
        self.state = ServingState()
        # Before the server and any client channel exist, so that both are instrumented.
        configure_tracing(service, options.otlp_endpoint)
        methods = [m.name for name in service_names
                   for m in descriptor_pool.Default().FindServiceByName(name).methods]
        metrics.precreate_rpc_series(service, methods)
        self.grpc = grpc.aio.server(
            interceptors=[ServingInterceptor(service, self.state), *interceptors],
            options=[("grpc.max_receive_message_length", options.max_receive_bytes),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024),
                     # Clients reconnect now and then, so round-robin over a headless Service finds
                     # new replicas; the grace period lets the longest request finish first.
                     ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                     ("grpc.max_connection_age_grace_ms", 15 * 60 * 1000),
                     # gRPC would let a second server bind a port this one holds (SO_REUSEPORT), and
                     # the kernel would split new connections between the two: a replica started on
                     # a taken port fails at start instead.
                     ("grpc.so_reuseport", 0)],
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if options.reflection:
            reflection.enable_server_reflection(
                [*service_names, _HEALTH_SERVICE, reflection.SERVICE_NAME], self.grpc)
        address = f"{options.host}:{options.port}"
        if options.tls:
            self.port = self.grpc.add_secure_port(address, options.tls.credentials(service))
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {address}")

    async def start(self) -> None:
        await self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        metrics_host = self.options.metrics_host or self.options.host
        metrics.start_metrics_server(self.options.metrics_port, metrics_host)
        await self.grpc.start()
        log.info("%s listening on %s:%d%s (metrics on %s:%s)", self.service, self.options.host, self.port,
                 " with TLS" if self.options.tls else "", metrics_host, self.options.metrics_port or "off")

    async def _set_status(self, status) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def mark_serving(self) -> None:
        await self._set_status(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace: float) -> None:
        """Move clients to other replicas, let calls in flight finish, stop; all within `grace`
        seconds. Health goes NOT_SERVING (clients that watch it stop picking this replica) and new
        calls get UNAVAILABLE; after HEALTH_NOTICE_SECONDS the server sends GOAWAY and closes its
        listener (other clients reconnect, to another replica); calls in flight get the rest."""
        await self.health.enter_graceful_shutdown()
        self.state.draining = True
        log.info("%s draining: %d calls in flight, up to %.0f s", self.service, self.state.in_flight, grace)
        notice = min(grace, HEALTH_NOTICE_SECONDS)
        await asyncio.sleep(notice)
        stopping = asyncio.create_task(self.grpc.stop(grace - notice))
        finished = await self.state.wait_idle(grace - notice)
        if not finished and self.state.in_flight:
            log.warning("%s: %d calls still running after %.0f s; stopping them", self.service,
                        self.state.in_flight, grace)
        # Clients' health watches are calls too, open for as long as the client is: without this
        # they would hold the server up for the whole grace period. With no grace left the first
        # stop already is this one: a second shutdown racing it is not asked for.
        if grace > notice:
            await self.grpc.stop(0)
        await stopping

    async def serve_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain for the configured grace period."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await self.drain(self.options.drain_grace_seconds)
