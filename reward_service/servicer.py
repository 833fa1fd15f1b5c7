"""gRPC translation for the reward service: messages in, the engine's work, messages out."""
import time

import grpc

from common.chat import PromptError, message_dicts
from specrej.v1 import reward_pb2 as pb
from specrej.v1 import reward_pb2_grpc
from .engine import DeadlineExceeded, Overloaded, ScoringEngine
from .limits import FieldError
from .scorers import Item, Scored


def score_items(request: pb.ScoreRequest) -> list[Item]:
    return [Item(i.response, i.complete, i.candidate) for i in request.items]


def score_response(scored: Scored) -> pb.ScoreResponse:
    return pb.ScoreResponse(scores=scored.scores, scored_tokens=scored.tokens, score_seconds=scored.seconds)


def status_of(error: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status for an error the engine raises about a request, None for anything else."""
    if isinstance(error, FieldError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, PromptError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"messages: {error}"
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
    return None


class RewardServicer(reward_pb2_grpc.RewardServicer):
    """Serves once `engine` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, engine: ScoringEngine | None = None, *, model_name: str = ""):
        self.engine, self.model_name = engine, model_name

    def _ready_engine(self, context) -> ScoringEngine:
        if self.engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the reward service is still loading its model")
        return self.engine

    def Info(self, request, context):
        scorer = self._ready_engine(context).scorer
        return pb.RewardInfoResponse(model=self.model_name, scorer=scorer.name, device=str(scorer.device),
                                     dtype=str(scorer.dtype).removeprefix("torch."))

    def Score(self, request, context):
        engine = self._ready_engine(context)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            future = engine.submit(message_dicts(request.messages), score_items(request), session=request.session,
                                   deadline=deadline)
            return score_response(future.result())
        except Exception as error:
            status = status_of(error)
            if status is None:
                raise
            context.abort(*status)

    def Release(self, request, context):
        return pb.ReleaseResponse(freed_bytes=self._ready_engine(context).release(request.session))
