"""gRPC translation for the generator: messages in, engine futures awaited, messages out.

No thread is held while a session waits or decodes: the engine's decode loop answers futures that
the stream's coroutine awaits. When the client cancels or its deadline passes, the coroutine is
cancelled and the session closed, which frees its memory at the loop's next turn."""
import asyncio
import logging

from common.errors import FieldError, Unavailable
from specrej.v1 import generator_pb2 as pb
from specrej.v1 import generator_pb2_grpc
from . import metrics
from .engine import GeneratorEngine
from .messages import advanced_message, prepare_start, pruned_message, started_message

log = logging.getLogger(__name__)


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
            kv_cache_budget_bytes=engine.budget_bytes, kv_cache_bytes_per_token=engine.bytes_per_token,
            max_context_tokens=engine.decoder.max_context, max_batch_size=engine.max_batch_size,
            active_sessions=engine.admission.active,
        )

    async def Session(self, request_iterator, context):
        engine = self._ready_engine()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("command") != "start":
            raise FieldError("command", "a session begins with `start`")
        # Tokenizing a long prompt takes a moment: off the event loop, before any memory is held.
        request = await asyncio.to_thread(prepare_start, engine, first.start)
        session = engine.admit(request)
        try:
            started = await asyncio.wrap_future(session.start())
            metrics.PREFILL_SECONDS.labels(metrics.SERVICE).observe(started.prefill_seconds)
            metrics.TOKENS.labels(metrics.SERVICE).inc(started.n)  # every row's first token, sampled at prefill
            yield pb.SessionEvent(started=started_message(started))
            async for command in request_iterator:
                kind = command.WhichOneof("command")
                if kind == "advance":
                    result = await asyncio.wrap_future(session.advance(command.advance.until_tokens))
                    yield pb.SessionEvent(advanced=advanced_message(result))
                elif kind == "prune":
                    pruned = await asyncio.wrap_future(session.prune(list(command.prune.keep)))
                    metrics.PRUNE_SECONDS.labels(metrics.SERVICE).observe(pruned.prune_seconds)
                    yield pb.SessionEvent(pruned=pruned_message(pruned))
                else:
                    raise FieldError("command", f"`{kind}` is only allowed first")
        except asyncio.CancelledError:
            log.info("session cancelled by its client")
            raise
        finally:
            session.close()
