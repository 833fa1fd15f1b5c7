"""gRPC translation for the generator: messages in, session calls, messages out."""
import logging

import grpc

from common.chat import PromptError, message_dicts
from specrej.v1 import generator_pb2 as pb
from specrej.v1 import generator_pb2_grpc
from . import metrics
from .admission import Overloaded
from .engine import GeneratorEngine
from .messages import advanced_message, pruned_message, sampling_params, started_message
from .session import SessionCancelled, SessionError

log = logging.getLogger(__name__)


def _check_start(start: pb.StartSession) -> str | None:
    """The first invalid field, described; None when the request is well formed."""
    sampling = start.sampling
    if not start.messages:
        return "messages: at least one message is required"
    if any(not m.content.strip() for m in start.messages):
        return "messages: every message needs content"
    if start.max_new_tokens < 1:
        return "max_new_tokens: must be at least 1"
    if not sampling.temperature >= 0:
        return "sampling.temperature: must be >= 0"
    if not 0 <= sampling.top_p <= 1:
        return "sampling.top_p: must be in (0, 1] (0 means 1)"
    return None


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Serves once `engine` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, engine: GeneratorEngine | None = None):
        self.engine = engine

    def _ready_engine(self, context) -> GeneratorEngine:
        if self.engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the generator is still loading its model")
        return self.engine

    def Info(self, request, context):
        engine = self._ready_engine(context)
        return pb.InfoResponse(
            model=engine.model_name, device=str(engine.device), dtype=str(engine.dtype).removeprefix("torch."),
            kv_cache_budget_bytes=engine.budget_bytes, kv_cache_bytes_per_token=engine.decoder.kv_bytes_per_token(),
            max_context_tokens=engine.decoder.max_context, max_batch_size=engine.planner.max_batch_size,
            active_sessions=len(engine.sessions),
        )

    def Session(self, request_iterator, context):
        engine = self._ready_engine(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("command") != "start":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "command: a session begins with `start`")
        start = first.start
        problem = _check_start(start)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            with engine.slots.hold(context.is_active):
                yield from self._run(engine, start, request_iterator, context)
        except Overloaded as error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))

    def _run(self, engine, start, request_iterator, context):
        messages = message_dicts(start.messages)
        try:
            session = engine.open_session(
                messages, n=start.n, max_new_tokens=start.max_new_tokens, sampling=sampling_params(start.sampling),
                min_tokens_before_full=start.min_tokens_before_full,
            )
        except PromptError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"messages: {error}")
        except SessionError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        context.add_callback(session.cancelled.set)
        try:
            prefill_seconds = session.start()
            metrics.PREFILL_SECONDS.labels(metrics.SERVICE).observe(prefill_seconds)
            yield pb.SessionEvent(started=started_message(session, prefill_seconds))
            for command in request_iterator:
                kind = command.WhichOneof("command")
                if kind == "advance":
                    yield pb.SessionEvent(advanced=self._advance(session, command.advance.until_tokens))
                elif kind == "prune":
                    yield pb.SessionEvent(pruned=self._prune(session, list(command.prune.keep), context))
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"command: `{kind}` is only allowed first")
        except SessionCancelled:
            log.info("session cancelled by its client")
        finally:
            engine.close_session(session)

    def _advance(self, session, until_tokens: int) -> pb.Advanced:
        result = session.advance(until_tokens)
        metrics.observe_advance(result)
        return advanced_message(session, result)

    def _prune(self, session, keep: list[int], context) -> pb.Pruned:
        try:
            seconds = session.prune(keep)
        except SessionError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        metrics.PRUNE_SECONDS.labels(metrics.SERVICE).observe(seconds)
        return pruned_message(session, seconds)
