"""gRPC translation for the reward service."""
import threading
import time

import grpc

from common.chat import PromptError, message_dicts
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

    def _ready_scorer(self, context):
        if self.scorer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the reward service is still loading its model")
        return self.scorer

    def Info(self, request, context):
        scorer = self._ready_scorer(context)
        return pb.RewardInfoResponse(model=self.model_name, scorer=scorer.name, device=str(scorer.device),
                                     dtype=str(scorer.model.dtype).removeprefix("torch."))

    def Score(self, request, context):
        scorer = self._ready_scorer(context)
        if not request.messages:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "messages: at least one message is required")
        if len(request.items) > self.max_items:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"items: {len(request.items)} responses in one request; the limit is {self.max_items}")
        try:
            with self._model_lock:
                response, scored = score(scorer, request)
        except PromptError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"messages: {error}")
        metrics.observe(scored, response.score_seconds)
        return response
