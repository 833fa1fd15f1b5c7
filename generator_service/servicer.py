"""gRPC translation for the generator: messages in, the backend's session awaited, messages out.

No thread is held while a session waits or decodes. When the client cancels or its deadline
passes, the coroutine is cancelled and the session closed, which frees its memory."""
import asyncio
import logging

from common.errors import FieldError, Unavailable
from specrej.v1 import generator_pb2 as pb
from specrej.v1 import generator_pb2_grpc
from . import metrics
from .backend import GeneratorBackend
from .messages import advanced_message, prepare_start, pruned_message, started_message

log = logging.getLogger(__name__)


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Serves once `backend` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, backend: GeneratorBackend | None = None):
        self.backend = backend

    def _ready_backend(self) -> GeneratorBackend:
        if self.backend is None:
            raise Unavailable("the generator is still loading its model")
        return self.backend

    async def Info(self, request, context):
        backend = self._ready_backend()
        info = backend.info
        return pb.InfoResponse(
            model=info.model, device=info.device, dtype=info.dtype, kv_cache_budget_bytes=info.kv_cache_budget_bytes,
            kv_cache_bytes_per_token=info.kv_cache_bytes_per_token, max_context_tokens=info.max_context_tokens,
            max_batch_size=info.max_batch_size, active_sessions=backend.active_sessions(), tokenizer=info.tokenizer,
        )

    async def Session(self, request_iterator, context):
        backend = self._ready_backend()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("command") != "start":
            raise FieldError("command", "a session begins with `start`")
        # Tokenizing a long prompt takes a moment: off the event loop, before any memory is held.
        request = await asyncio.to_thread(prepare_start, backend, first.start)
        session = backend.admit(request)
        try:
            started = await session.start()
            metrics.PREFILL_SECONDS.labels(metrics.SERVICE).observe(started.prefill_seconds)
            metrics.TOKENS.labels(metrics.SERVICE).inc(started.n)  # every row's first token, sampled at prefill
            yield pb.SessionEvent(started=started_message(started, backend.info.tokenizer))
            async for command in request_iterator:
                kind = command.WhichOneof("command")
                if kind == "advance":
                    advance = command.advance
                    result = await session.advance(advance.until_tokens, list(advance.keep), list(advance.fork_from))
                    if advance.keep:
                        metrics.PRUNE_SECONDS.labels(metrics.SERVICE).observe(result.prune_seconds)
                    yield pb.SessionEvent(advanced=advanced_message(result))
                elif kind == "prune":
                    pruned = await session.prune(list(command.prune.keep))
                    metrics.PRUNE_SECONDS.labels(metrics.SERVICE).observe(pruned.prune_seconds)
                    yield pb.SessionEvent(pruned=pruned_message(pruned))
                else:
                    raise FieldError("command", f"`{kind}` is only allowed first")
        except asyncio.CancelledError:
            log.info("session cancelled by its client")
            raise
        finally:
            session.close()
