"""The one place where a service's calls are counted, timed, refused while draining, and where
the project's errors (common.errors) become gRPC statuses."""
import asyncio
import logging
import time

import grpc

from . import errors, metrics

log = logging.getLogger(__name__)

# Probes and tooling: never refused while draining (health must say NOT_SERVING), never counted.
_INFRASTRUCTURE_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class ServingState:
    """Calls in flight and whether the server is draining; shared by the server and its interceptor."""

    def __init__(self):
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def _ended_by_client(context) -> grpc.StatusCode:
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


class ServingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, state: ServingState):
        self.service, self.state = service, state

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_INFRASTRUCTURE_PREFIXES):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        interceptor = self

        class _Call:
            """Counts, times and translates one call."""

            def __init__(self, context):
                self.context, self.began, self.code = context, time.perf_counter(), grpc.StatusCode.OK

            async def __aenter__(self):
                if interceptor.state.draining:
                    self.code = grpc.StatusCode.UNAVAILABLE
                    self._record()
                    await self.context.abort(grpc.StatusCode.UNAVAILABLE,
                                             "the server is shutting down; retry on another replica")
                interceptor.state.enter()
                return self

            async def __aexit__(self, kind, error, traceback):
                interceptor.state.leave()
                try:
                    if isinstance(error, errors.ServiceError):
                        status = errors.status_of(error)
                        self.code = status.code
                        await self.context.abort(status.code, status.message, status.trailing_metadata)
                    elif isinstance(error, asyncio.CancelledError):
                        self.code = _ended_by_client(self.context)
                    elif isinstance(error, grpc.aio.AbortError):
                        self.code = self.context.code() or grpc.StatusCode.UNKNOWN
                    elif error is not None:
                        log.exception("%s/%s failed", interceptor.service, method, exc_info=error)
                        self.code = grpc.StatusCode.INTERNAL
                        await self.context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server's log")
                finally:
                    self._record()
                return False

            def _record(self):
                metrics.GRPC_HANDLED.labels(interceptor.service, method, self.code.name).inc()
                metrics.GRPC_SECONDS.labels(interceptor.service, method).observe(time.perf_counter() - self.began)

        def unary_response(behavior):
            async def wrapped(request, context):
                async with _Call(context):
                    return await behavior(request, context)
            return wrapped

        def stream_response(behavior):
            async def wrapped(request, context):
                async with _Call(context):
                    async for response in behavior(request, context):
                        yield response
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
