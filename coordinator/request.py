"""Checking a GenerateRequest and turning it into a plan. Bad fields get a message naming them."""
import math
import secrets
from dataclasses import dataclass

from specrej.v1 import coordinator_pb2 as pb
from .schedule import DEFAULT_FIRST_DECISION_TOKENS, AdaptiveRejectionRate, DecisionSchedule

# At a first decision point of 64 tokens, alpha 0.7 kept Best-of-n0's choice on every measured pair
# (as 0.5 did) and saved more; 0.9 lost it on one (README, "Choosing the default schedule").
DEFAULT_REJECTION_RATE = 0.7
_ROLES = {"system", "user", "assistant"}


class InvalidRequest(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    messages: list[dict]
    n: int
    method: int
    rejection_rate: float
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    schedule: DecisionSchedule
    return_top: int


def plan_request(request: pb.GenerateRequest, *, max_n: int,
                 first_decision_tokens: int = DEFAULT_FIRST_DECISION_TOKENS) -> Plan:
    """Validate every field of `request`; raise InvalidRequest naming the first bad one.
    `first_decision_tokens` is where a request that names no schedule decides first (then at each
    doubling); 0 leaves such requests to memory-driven decision points alone."""
    messages = _messages(request)
    if request.method not in pb.Method.values():
        raise InvalidRequest(f"method: unknown method {request.method}")
    best_of_n = request.method == pb.BEST_OF_N
    if request.n > max_n:
        raise InvalidRequest(f"n: {request.n} is more than this service's limit of {max_n}")
    alpha = request.rejection_rate if request.HasField("rejection_rate") else DEFAULT_REJECTION_RATE
    if not (math.isfinite(alpha) and 0 <= alpha < 1):
        raise InvalidRequest(f"rejection_rate: must be in [0, 1), got {alpha}")
    if request.max_new_tokens < 1:
        raise InvalidRequest("max_new_tokens: must be at least 1")
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidRequest(f"temperature: must be >= 0 (0 = greedy), got {temperature}")
    top_p = request.top_p if request.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidRequest(f"top_p: must be in (0, 1], got {top_p}")
    points = sorted(set(request.decision_points))
    if points and points[0] == 0:
        raise InvalidRequest("decision_points: positions must be at least 1")
    if request.HasField("first_decision_tokens"):
        first_decision_tokens = request.first_decision_tokens
    if request.adaptive_rejection and not best_of_n:
        alpha = AdaptiveRejectionRate(alpha)
    return Plan(
        messages=messages,
        n=request.n,
        method=request.method,
        rejection_rate=0.0 if best_of_n else alpha,
        max_new_tokens=request.max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=request.top_k,
        seed=request.seed if request.HasField("seed") else secrets.randbits(63),
        schedule=DecisionSchedule(every_tokens=request.decision_every_tokens, points=tuple(points),
                                  enabled=not best_of_n, first_tokens=first_decision_tokens),
        return_top=max(1, request.return_top),
    )


def _messages(request: pb.GenerateRequest) -> list[dict]:
    if request.prompt and request.messages:
        raise InvalidRequest("prompt: give either prompt or messages, not both")
    if not request.messages:
        if not request.prompt.strip():
            raise InvalidRequest("prompt: must not be empty")
        return [{"role": "user", "content": request.prompt}]
    for position, message in enumerate(request.messages):
        if message.role not in _ROLES:
            raise InvalidRequest(f"messages[{position}].role: must be one of {sorted(_ROLES)}, got {message.role!r}")
        if not message.content.strip():
            raise InvalidRequest(f"messages[{position}].content: must not be empty")
    return [{"role": m.role, "content": m.content} for m in request.messages]
