"""The one place where a service's calls are counted, timed, logged with their request id
(common.requestlog), refused while draining, and where the project's errors (common.errors) and
request bytes that do not parse become gRPC statuses."""
import asyncio
import logging
import time

import grpc

from . import errors, metrics, requestlog

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


def ended_by_client(context) -> grpc.StatusCode:
    """How a call that its client ended counts: DEADLINE_EXCEEDED once its deadline passed, else CANCELLED."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


def with_behavior(handler, unary_response, stream_response, request_deserializer=None):
    """`handler` with its behavior wrapped: `unary_response(behavior)` for calls that answer one
    message, `stream_response(behavior)` for calls that answer a stream."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary_response(handler.unary_unary), deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream_response(handler.unary_stream), deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary_response(handler.stream_unary), deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        stream_response(handler.stream_stream), deserializer, handler.response_serializer)


class _Undecodable:
    """What a request's bytes became when they do not parse (e.g. invalid UTF-8 in a string field)."""

    def __init__(self, error: Exception):
        self.error = error

    def field_error(self) -> errors.FieldError:
        return errors.FieldError("request", f"the bytes do not parse as this method's request message ({self.error})")


def _tolerant(deserializer):
    """Left alone, grpc.aio answers bytes that do not parse with UNKNOWN ("Unexpected DecodeError");
    here they reach the call as _Undecodable, which it answers with INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as error:  # protobuf's DecodeError, or anything a custom deserializer raises
            return _Undecodable(error)
    return deserialize


def _checked(request):
    if isinstance(request, _Undecodable):
        raise request.field_error()
    return request


async def _checked_stream(request_iterator):
    async for request in request_iterator:
        yield _checked(request)


def _request_of(handler, request):
    """The request (or request stream) the servicer sees: undecodable ones raise FieldError."""
    if handler.stream_unary or handler.stream_stream:
        return _checked_stream(request)
    return _checked(request)


class ServingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, state: ServingState):
        self.service, self.state = service, state
        requestlog.request_logger()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_INFRASTRUCTURE_PREFIXES):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        request_id = requestlog.request_id_of(handler_call_details.invocation_metadata)
        interceptor = self

        class _Call:
            """Counts, times, logs and translates one call."""

            def __init__(self, context):
                self.context, self.began, self.code = context, time.perf_counter(), grpc.StatusCode.OK
                self.log = requestlog.CallLog(interceptor.service, method, request_id)
                self.metadata = self.log.metadata

            async def __aenter__(self):
                requestlog.begin(self.log)
                self.context.set_trailing_metadata(self.metadata)
                if interceptor.state.draining:
                    self.code = grpc.StatusCode.UNAVAILABLE
                    self._record()
                    await self.context.abort(grpc.StatusCode.UNAVAILABLE,
                                             "the server is shutting down; retry on another replica", self.metadata)
                interceptor.state.enter()
                return self

            async def __aexit__(self, kind, error, traceback):
                # The call is counted and logged before its status leaves, so whoever sees the
                # status also finds the call in the metrics and the log.
                interceptor.state.leave()
                answer = None  # (code, message, trailing metadata) this wrapper still has to send
                if isinstance(error, errors.ServiceError):
                    status = errors.status_of(error)
                    answer = (status.code, status.message, status.trailing_metadata + self.metadata)
                elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
                    # GeneratorExit: grpc.aio closes a response stream when writing to it fails
                    # (ExecuteBatchError), which it does once the client has gone.
                    self.code = ended_by_client(self.context)
                elif isinstance(error, grpc.aio.AbortError):
                    self.code = self.context.code() or grpc.StatusCode.UNKNOWN
                elif error is not None:
                    log.exception("%s/%s failed", interceptor.service, method, exc_info=error)
                    answer = (grpc.StatusCode.INTERNAL, "internal error; see the server's log", self.metadata)
                if answer:
                    self.code = answer[0]
                self._record()
                if answer:
                    await self.context.abort(*answer)
                return False

            def _record(self):
                seconds = time.perf_counter() - self.began
                metrics.GRPC_HANDLED.labels(interceptor.service, method, self.code.name).inc()
                metrics.GRPC_SECONDS.labels(interceptor.service, method).observe(seconds)
                self.log.write(self.code.name, seconds)

        def unary_response(behavior):
            async def wrapped(request, context):
                async with _Call(context):
                    return await behavior(_request_of(handler, request), context)
            return wrapped

        def stream_response(behavior):
            async def wrapped(request, context):
                async with _Call(context):
                    async for response in behavior(_request_of(handler, request), context):
                        yield response
            return wrapped

        return with_behavior(handler, unary_response, stream_response, _tolerant(handler.request_deserializer))
