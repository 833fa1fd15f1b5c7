"""gRPC translation for the public Coordinator API: check the request, admit it, make sure the
reward model is reachable, run the pipeline over a generator session, and account for the request
(metrics, its log line, its trace span). Failures are common.errors; the server's interceptor
turns them into statuses."""
import asyncio
import dataclasses
import logging
import time

import grpc
from opentelemetry import trace

from common import errors, requestlog
from common.interceptor import ended_by_client
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc
from . import metrics
from .admission import Admission
from .clients import GeneratorClient, RewardClient
from .pipeline import Pipeline
from .request import Limits, plan_request

tracer = trace.get_tracer(__name__)

log = logging.getLogger(__name__)

_NO_DEADLINE = 10**7  # seconds; without a client deadline gRPC reports a time far in the future
# Runs of one request: a second one when the first lost its generator or reward replica.
_ATTEMPTS = 2


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """`max_request_seconds` (the drain grace) caps the time any request runs, whatever its client's
    deadline, so that a request started just before a drain can still finish; None = no cap."""

    def __init__(self, generator: GeneratorClient, reward: RewardClient, admission: Admission, limits: Limits,
                 default_timeout: float, score_ahead_tokens: int = 0, max_request_seconds: float | None = None):
        self.generator, self.reward, self.admission = generator, reward, admission
        self.limits, self.default_timeout, self.score_ahead_tokens = limits, default_timeout, score_ahead_tokens
        self.max_request_seconds = max_request_seconds

    async def Generate(self, request, context):
        response = None
        async for event in self._events(request, context, rounds_reach_client=False):
            response = event
        return response

    async def GenerateStream(self, request, context):
        async for event in self._events(request, context, rounds_reach_client=True):
            if isinstance(event, pb.Round):
                yield pb.GenerateEvent(round=event)
            else:
                yield pb.GenerateEvent(result=event)

    async def _events(self, request, context, rounds_reach_client: bool):
        """Run one request; yields its Rounds, then its GenerateResponse. A request whose upstream
        replica was lost (UNAVAILABLE) runs again from the start on another while nothing of it has
        reached the client: the same seed gives the same candidates there."""
        method = metrics.method_name(request.method)
        call_log = requestlog.current()
        call_log.add(n=request.n, method_name=method)
        began = time.perf_counter()
        code = grpc.StatusCode.OK
        pipeline = None
        capped = False
        metrics.IN_FLIGHT.labels(metrics.SERVICE).inc()
        try:
            with tracer.start_as_current_span("request", attributes={"specrej.request_id": call_log.request_id,
                                                                     "specrej.method": method}):
                limits = dataclasses.replace(self.limits, max_context_tokens=await self.generator.context_tokens())
                plan = plan_request(request, limits)
                call_log.add(alpha=plan.rejection_rate, max_new_tokens=plan.max_new_tokens)
                async with self.admission.slot(work=max(plan.n, 1) * plan.max_new_tokens):
                    # Fail before any decoding when the reward model could not rank the candidates.
                    await self.reward.check_reachable()
                    for attempt in range(1, _ATTEMPTS + 1):
                        timeout, capped = self._timeout(context, began)
                        reached_client = False
                        try:
                            async with self.generator.session(timeout, call_log.metadata) as session, \
                                    self.reward.for_request(timeout, call_log.metadata) as reward:
                                pipeline = Pipeline(plan, session, reward, self.score_ahead_tokens)
                                metrics.QUEUED.labels(metrics.SERVICE).inc()
                                try:
                                    await pipeline.start()
                                finally:
                                    metrics.QUEUED.labels(metrics.SERVICE).dec()
                                async for event in pipeline.events():
                                    if isinstance(event, pb.Round):
                                        metrics.observe_round(event)
                                    else:
                                        metrics.observe_result(event)
                                    if rounds_reach_client or not isinstance(event, pb.Round):
                                        reached_client = True
                                    yield event
                            break
                        except errors.Unavailable as error:
                            if reached_client or attempt == _ATTEMPTS:
                                raise
                            log.warning("request %s lost an upstream replica (%s); running it again",
                                        call_log.request_id, error)
        except errors.ServiceError as error:
            code = error.code
            if capped and isinstance(error, errors.DeadlineExceeded):
                raise errors.DeadlineExceeded(
                    f"the request ran for the coordinator's limit of {self.max_request_seconds:g} s "
                    "(its drain grace), which is shorter than the request's deadline") from None
            raise
        except asyncio.CancelledError:
            code = ended_by_client(context)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            seconds = time.perf_counter() - began
            metrics.IN_FLIGHT.labels(metrics.SERVICE).dec()
            metrics.REQUESTS.labels(metrics.SERVICE, method, code.name).inc()
            metrics.REQUEST_SECONDS.labels(metrics.SERVICE, method).observe(seconds)
            if pipeline is not None and pipeline.started is not None:
                metrics.observe_decoded(method, pipeline.decoded_tokens)
                _log_work(call_log, pipeline, seconds)

    def _timeout(self, context, began: float) -> tuple[float, bool]:
        """(seconds the request may still run, whether the cap cut its deadline short). The cap
        counts from the call's arrival, its time in the queue included."""
        remaining = context.time_remaining()
        requested = remaining if remaining is not None and remaining < _NO_DEADLINE else self.default_timeout
        if self.max_request_seconds is not None:
            left = max(0.0, self.max_request_seconds - (time.perf_counter() - began))
            if requested > left:
                return left, True
        return requested, False


def _log_work(call_log: requestlog.CallLog, pipeline: Pipeline, seconds: float) -> None:
    clock = pipeline.clock
    call_log.add(
        n=pipeline.started.n, decision_points=len(pipeline.rounds), tokens_decoded=pipeline.decoded_tokens,
        tokens_scored=pipeline.scored_tokens, prefill_seconds=round(clock.prefill, 6),
        generate_seconds=round(clock.generate, 6), score_seconds=round(clock.score, 6),
        coordinator_seconds=round(max(0.0, seconds - clock.generate - clock.score), 6),
    )
