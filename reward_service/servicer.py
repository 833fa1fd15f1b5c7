"""gRPC translation for the reward service: messages in, the engine's work, messages out."""
import asyncio
import time

from common.chat import message_dicts
from common.errors import Unavailable
from specrej.v1 import reward_pb2 as pb
from specrej.v1 import reward_pb2_grpc
from .engine import ScoringEngine
from .scorers import Item, Scored


def score_items(request: pb.ScoreRequest) -> list[Item]:
    return [Item(i.response, i.complete, i.candidate) for i in request.items]


def score_response(scored: Scored) -> pb.ScoreResponse:
    return pb.ScoreResponse(scores=scored.scores, scored_tokens=scored.tokens, score_seconds=scored.seconds)


class RewardServicer(reward_pb2_grpc.RewardServicer):
    """Serves once `engine` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, engine: ScoringEngine | None = None, *, model_name: str = ""):
        self.engine, self.model_name = engine, model_name

    def _ready_engine(self) -> ScoringEngine:
        if self.engine is None:
            raise Unavailable("the reward service is still loading its model")
        return self.engine

    async def Info(self, request, context):
        scorer = self._ready_engine().scorer
        return pb.RewardInfoResponse(model=self.model_name, scorer=scorer.name, device=str(scorer.device),
                                     dtype=str(scorer.dtype).removeprefix("torch."))

    async def Score(self, request, context):
        engine = self._ready_engine()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        # Tokenizing runs here, on a thread, so a long conversation never stalls the event loop.
        future = await asyncio.to_thread(engine.submit, message_dicts(request.messages), score_items(request),
                                         session=request.session, deadline=deadline)
        # A caller that goes away cancels this wait and, through it, the future: still queued, it is skipped.
        return score_response(await asyncio.wrap_future(future))

    async def Release(self, request, context):
        return pb.ReleaseResponse(freed_bytes=self._ready_engine().release(request.session))
