"""OpenTelemetry tracing, off unless an OTLP endpoint is given: gRPC server and client spans from
opentelemetry-instrumentation-grpc, and the services' own spans inside them, sent to an OTLP/gRPC
collector. Call `configure_tracing` before creating the server and channels: instrumenting
patches how grpc.aio builds them."""
import logging

log = logging.getLogger(__name__)


def configure_tracing(service: str, endpoint: str | None) -> bool:
    """Export spans of `service` to `endpoint` (http://HOST:4317 plain, https://HOST:4317 over TLS);
    None = tracing off. Returns whether tracing is on."""
    if not endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"specrej-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    instrument_grpc()
    log.info("sending traces to %s", endpoint)
    return True


def instrument_grpc() -> None:
    """Spans for every grpc.aio server call and client call made from now on."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
