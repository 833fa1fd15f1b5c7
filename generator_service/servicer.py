"""gRPC translation for the generator: messages in, session calls, messages out."""
import asyncio
import logging

from common.chat import PromptError, message_dicts
from common.errors import FieldError, Unavailable
from specrej.v1 import generator_pb2 as pb
from specrej.v1 import generator_pb2_grpc
from . import metrics
from .engine import GeneratorEngine
from .messages import advanced_message, pruned_message, sampling_params, started_message
from .session import SessionCancelled

log = logging.getLogger(__name__)


def _check_start(start: pb.StartSession) -> None:
    """Raise FieldError for the first invalid field."""
    sampling = start.sampling
    if not start.messages:
        raise FieldError("messages", "at least one message is required")
    if any(not m.content.strip() for m in start.messages):
        raise FieldError("messages", "every message needs content")
    if start.max_new_tokens < 1:
        raise FieldError("max_new_tokens", "must be at least 1")
    if not sampling.temperature >= 0:
        raise FieldError("sampling.temperature", "must be >= 0")
    if not 0 <= sampling.top_p <= 1:
        raise FieldError("sampling.top_p", "must be in (0, 1] (0 means 1)")


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Serves once `engine` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, engine: GeneratorEngine | None = None):
        self.engine = engine

    def _ready_engine(self) -> GeneratorEngine:
        if self.engine is None:
            raise Unavailable("the generator is still loading its model")
        return self.engine

    async def Info(self, request, context):
        engine = self._ready_engine()
        return pb.InfoResponse(
            model=engine.model_name, device=str(engine.device), dtype=str(engine.dtype).removeprefix("torch."),
            kv_cache_budget_bytes=engine.budget_bytes, kv_cache_bytes_per_token=engine.decoder.kv_bytes_per_token(),
            max_context_tokens=engine.decoder.max_context, max_batch_size=engine.planner.max_batch_size,
            active_sessions=len(engine.sessions),
        )

    async def Session(self, request_iterator, context):
        engine = self._ready_engine()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("command") != "start":
            raise FieldError("command", "a session begins with `start`")
        start = first.start
        _check_start(start)
        slot = engine.slots.hold(lambda: not context.done())
        await asyncio.to_thread(slot.__enter__)
        try:
            async for event in self._run(engine, start, request_iterator):
                yield event
        finally:
            slot.__exit__(None, None, None)

    async def _run(self, engine, start, request_iterator):
        messages = message_dicts(start.messages)
        try:
            session = engine.open_session(
                messages, n=start.n, max_new_tokens=start.max_new_tokens, sampling=sampling_params(start.sampling),
                min_tokens_before_full=start.min_tokens_before_full,
            )
        except PromptError as error:
            raise FieldError("messages", str(error)) from None
        try:
            prefill_seconds = await asyncio.to_thread(session.start)
            metrics.PREFILL_SECONDS.labels(metrics.SERVICE).observe(prefill_seconds)
            metrics.TOKENS.labels(metrics.SERVICE).inc(session.n)  # every row's first token, sampled at prefill
            yield pb.SessionEvent(started=started_message(session, prefill_seconds))
            async for command in request_iterator:
                kind = command.WhichOneof("command")
                if kind == "advance":
                    result = await asyncio.to_thread(session.advance, command.advance.until_tokens)
                    metrics.observe_advance(result)
                    yield pb.SessionEvent(advanced=advanced_message(session, result))
                elif kind == "prune":
                    seconds = await asyncio.to_thread(session.prune, list(command.prune.keep))
                    metrics.PRUNE_SECONDS.labels(metrics.SERVICE).observe(seconds)
                    yield pb.SessionEvent(pruned=pruned_message(session, seconds))
                else:
                    raise FieldError("command", f"`{kind}` is only allowed first")
        except SessionCancelled:
            log.info("session cancelled by its client")
        finally:
            session.cancelled.set()
            engine.close_session(session)
