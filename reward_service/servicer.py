"""gRPC translation for the reward service: messages in, the engine's work, messages out."""
import asyncio
import time

from common import requestlog
from common.chat import message_dicts
from common.errors import FieldError, ServiceError, Unavailable
from specrej.v1 import reward_pb2 as pb
from specrej.v1 import reward_pb2_grpc
from .engine import ScoringEngine
from .rounds import CandidateResponses, Delta
from .scorers import Item, Scored


def score_items(request: pb.ScoreRequest, token_ids: bool) -> list[Item]:
    """The request's responses: their token ids when `token_ids`, else their text."""
    if token_ids:
        return [Item("", i.complete, i.candidate, list(i.token_ids)) for i in request.items]
    return [Item(i.response, i.complete, i.candidate) for i in request.items]


def round_deltas(round_: pb.ScoreRound) -> list[Delta]:
    return [Delta(i.candidate, i.text_delta, i.complete, list(i.token_ids)) for i in round_.items]


def score_response(scored: Scored) -> pb.ScoreResponse:
    return pb.ScoreResponse(scores=scored.scores, scored_tokens=scored.tokens, score_seconds=scored.seconds)


def cancel_submitted(submitting: asyncio.Future) -> None:
    if not submitting.cancelled() and submitting.exception() is None:
        submitting.result().cancel()


def stream_field_error(error: FieldError) -> FieldError:
    """`error`, about a Score request's fields, named by the ScoreSession message that carried them."""
    if error.field == "messages":
        return FieldError("start.messages", error.description)
    return FieldError("round." + error.field.replace(".response", ".text_delta"), error.description)


class RewardServicer(reward_pb2_grpc.RewardServicer):
    """Serves once `engine` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, engine: ScoringEngine | None = None, *, model_name: str = ""):
        self.engine, self.model_name = engine, model_name

    def _ready_engine(self) -> ScoringEngine:
        if self.engine is None:
            raise Unavailable("the reward service is still loading its model")
        return self.engine

    async def Info(self, request, context):
        engine = self._ready_engine()
        scorer = engine.scorer
        return pb.RewardInfoResponse(model=self.model_name, scorer=scorer.name, device=str(scorer.device),
                                     dtype=str(scorer.dtype).removeprefix("torch."),
                                     tokenizer=engine.tokenizer_fingerprint)

    @staticmethod
    async def _scored(engine: ScoringEngine, messages: list[dict], items: list[Item], context,
                      session: str = "", tokenizer: str = "") -> pb.ScoreResponse:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        # Tokenizing runs here, on a thread, so a long conversation never stalls the event loop.
        submitting = asyncio.ensure_future(
            asyncio.to_thread(engine.submit, messages, items, session=session, deadline=deadline, tokenizer=tokenizer))
        try:
            future = await asyncio.shield(submitting)
        except asyncio.CancelledError:
            # The thread queues the request all the same: cancelled once queued, it costs no model work.
            submitting.add_done_callback(cancel_submitted)
            raise
        # A caller that goes away cancels this wait and, through it, the future: still queued, it is skipped.
        return score_response(await asyncio.wrap_future(future))

    async def Score(self, request, context):
        return await self._scored(self._ready_engine(), message_dicts(request.messages),
                                  score_items(request, bool(request.tokenizer)),
                                  context, tokenizer=request.tokenizer)

    @staticmethod
    def _opened(engine: ScoringEngine, first: pb.ScoreSessionRequest | None) -> tuple[list[dict], str]:
        """The conversation and tokenizer fingerprint of a stream's `start`; ServiceError when refused."""
        if first is None or first.WhichOneof("kind") != "start":
            raise FieldError("start", "a scoring stream begins with `start`")
        messages, tokenizer = message_dicts(first.start.messages), first.start.tokenizer
        try:
            engine.limits.check_shape(len(messages), 0)
        except FieldError as error:
            raise stream_field_error(error) from None
        if tokenizer:
            engine.check_tokenizer(tokenizer, "start.tokenizer")
        return messages, tokenizer

    async def ScoreSession(self, request_iterator, context):
        engine = self._ready_engine()
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        try:
            messages, tokenizer = self._opened(engine, first)
        except ServiceError:
            # A caller writes its first round right after `start`, then reads. Ended before that round
            # arrives, the stream would fail the caller's write, and gRPC's client reports that
            # failure (INTERNAL) in place of this status: the refusal answers the first round.
            if first is not None:
                await anext(requests, None)
            raise
        responses, session = CandidateResponses(token_ids=bool(tokenizer)), engine.open_session()
        call_log, rounds, tokens = requestlog.current(), 0, 0
        call_log.add(responses_as="token ids" if tokenizer else "text")
        try:
            async for request in requests:
                if request.WhichOneof("kind") != "round":
                    raise FieldError("round", "`start` is only allowed first")
                try:
                    items = responses.apply(round_deltas(request.round))
                    response = await self._scored(engine, messages, items, context, session, tokenizer)
                except FieldError as error:
                    raise stream_field_error(error) from None
                rounds, tokens = rounds + 1, tokens + response.scored_tokens
                call_log.add(rounds=rounds, tokens_scored=tokens)
                yield response
        finally:
            engine.release(session)
