"""gRPC translation for the reward service."""
import asyncio
import threading
import time

from common.chat import PromptError, message_dicts
from common.errors import FieldError, Overloaded, Unavailable
from specrej.v1 import reward_pb2 as pb
from specrej.v1 import reward_pb2_grpc
from . import metrics
from .scorers import Scored


def score(scorer, request: pb.ScoreRequest) -> tuple[pb.ScoreResponse, Scored]:
    """Score a request's responses; raises PromptError for a conversation the template rejects."""
    messages = message_dicts(request.messages)
    began = time.perf_counter()
    scored = scorer.score(messages, [i.response for i in request.items], [i.complete for i in request.items])
    seconds = time.perf_counter() - began
    return pb.ScoreResponse(scores=scored.scores, scored_tokens=scored.tokens, score_seconds=seconds), scored


class RewardServicer(reward_pb2_grpc.RewardServicer):
    """Serves once `scorer` is set; before that (the model is loading) every call is UNAVAILABLE."""

    def __init__(self, scorer=None, *, model_name: str = "", max_items: int = 4096):
        self.scorer, self.model_name, self.max_items = scorer, model_name, max_items
        # One forward pass at a time: the model is the bottleneck, and this bounds peak memory.
        self._model_lock = threading.Lock()

    def _ready_scorer(self):
        if self.scorer is None:
            raise Unavailable("the reward service is still loading its model")
        return self.scorer

    async def Info(self, request, context):
        scorer = self._ready_scorer()
        return pb.RewardInfoResponse(model=self.model_name, scorer=scorer.name, device=str(scorer.device),
                                     dtype=str(scorer.model.dtype).removeprefix("torch."))

    async def Score(self, request, context):
        scorer = self._ready_scorer()
        if not request.messages:
            raise FieldError("messages", "at least one message is required")
        if len(request.items) > self.max_items:
            raise Overloaded(f"items: {len(request.items)} responses in one request; the limit is {self.max_items}")
        try:
            response, scored = await asyncio.to_thread(self._score_locked, scorer, request)
        except PromptError as error:
            raise FieldError("messages", str(error)) from None
        metrics.observe(scored, response.score_seconds)
        return response

    def _score_locked(self, scorer, request):
        with self._model_lock:
            return score(scorer, request)
