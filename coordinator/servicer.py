"""gRPC translation for the public Coordinator API."""
import logging
import time

import grpc

from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc
from . import metrics
from .clients import GeneratorClient, RewardClient, ServiceError
from .pipeline import Pipeline
from .request import InvalidRequest, plan_request
from .schedule import DEFAULT_FIRST_DECISION_TOKENS

log = logging.getLogger(__name__)

_NO_DEADLINE = 10**7  # seconds


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, generator: GeneratorClient, reward: RewardClient, *, max_n: int, memory_round_tokens: int,
                 default_timeout: float, first_decision_tokens: int = DEFAULT_FIRST_DECISION_TOKENS):
        self.generator, self.reward = generator, reward
        self.max_n, self.memory_round_tokens, self.default_timeout = max_n, memory_round_tokens, default_timeout
        self.first_decision_tokens = first_decision_tokens

    def Generate(self, request, context):
        response = None
        for event in self._events(request, context):
            response = event
        return response

    def GenerateStream(self, request, context):
        for event in self._events(request, context):
            if isinstance(event, pb.Round):
                yield pb.GenerateEvent(round=event)
            else:
                yield pb.GenerateEvent(result=event)

    def _events(self, request, context):
        """Run the pipeline for one request; every failure becomes a gRPC status."""
        method = metrics.method_name(request.method)
        began = time.perf_counter()
        code = grpc.StatusCode.OK
        metrics.IN_FLIGHT.labels(metrics.SERVICE).inc()
        try:
            yield from self._run(request, context)
        except _Abort as abort:
            code = abort.code
            context.abort(abort.code, abort.message)
        except GeneratorExit:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            metrics.IN_FLIGHT.labels(metrics.SERVICE).dec()
            metrics.REQUESTS.labels(metrics.SERVICE, method, code.name).inc()
            metrics.REQUEST_SECONDS.labels(metrics.SERVICE, method).observe(time.perf_counter() - began)

    def _run(self, request, context):
        try:
            plan = plan_request(request, max_n=self.max_n, first_decision_tokens=self.first_decision_tokens)
        except InvalidRequest as error:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        remaining = context.time_remaining()
        # Without a client deadline gRPC reports a time far in the future; use the default instead.
        timeout = remaining if remaining is not None and remaining < _NO_DEADLINE else self.default_timeout
        session = self.generator.open(timeout)
        # A client that cancels or disconnects must not leave a session decoding on the generator.
        context.add_callback(session.cancel)
        pipeline = Pipeline(plan, session, self.reward, memory_round_tokens=self.memory_round_tokens,
                            deadline=time.monotonic() + timeout)
        try:
            metrics.QUEUED.labels(metrics.SERVICE).inc()
            try:
                pipeline.start()
            finally:
                metrics.QUEUED.labels(metrics.SERVICE).dec()
            for event in pipeline.events():
                if isinstance(event, pb.Round):
                    metrics.observe_round(event)
                else:
                    metrics.observe_result(event)
                yield event
        except ServiceError as error:
            if not context.is_active():
                raise _Abort(grpc.StatusCode.CANCELLED, "the client went away") from None
            raise _Abort(error.code, error.message) from None
        finally:
            session.close()


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message
