"""Checking a GenerateRequest and turning it into a plan. Bad fields raise common.errors.FieldError
naming them. Every check here is cheap: sizes and ranges, nothing that needs a model."""
import math
import secrets
from dataclasses import dataclass

from common.errors import FieldError
from specrej.v1 import common_pb2
from specrej.v1 import coordinator_pb2 as pb
from .schedule import DEFAULT_FIRST_DECISION_TOKENS, MEMORY, AdaptiveRejectionRate, DecisionSchedule

# At a first decision point of 64 tokens, alpha 0.7 kept Best-of-n0's response on 28 of 30 paired
# runs while decoding 2.45x fewer tokens; alpha 0.9 decoded 3.04x fewer but kept it on 23 (README,
# "Choosing the default schedule" and "The paired CPU measurement").
DEFAULT_REJECTION_RATE = 0.7
_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Limits:
    """What this coordinator accepts (its flags); the generator checks the rest exactly."""

    max_n: int = 1024
    max_prompt_bytes: int = 1_000_000
    max_messages: int = 256
    max_decision_points: int = 1024
    # Response tokens before the first memory-driven decision point (sizes n = 0).
    memory_round_tokens: int = 32
    # The generator model's context length when known; max_new_tokens must be below it.
    max_context_tokens: int | None = None
    # Where a request that names no schedule decides first (then at each doubling); 0 leaves such
    # requests to memory-driven decision points alone.
    first_decision_tokens: int = DEFAULT_FIRST_DECISION_TOKENS


@dataclass(frozen=True)
class Plan:
    messages: tuple[common_pb2.Message, ...]
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
    # Tokens every candidate must be able to decode before the KV cache is full (the generator sizes n by it).
    min_tokens_before_full: int
    # Branches of the best survivors refill the rows each decision point's rejections freed.
    refill: bool = False


def plan_request(request: pb.GenerateRequest, limits: Limits = Limits()) -> Plan:
    """Validate every field of `request`; raise FieldError naming the first bad one.
    A request's own `first_decision_tokens` overrides the coordinator's default."""
    messages = _messages(request, limits)
    if request.method not in pb.Method.values():
        raise FieldError("method", f"unknown method {request.method}")
    best_of_n = request.method == pb.BEST_OF_N
    if request.n > limits.max_n:
        raise FieldError("n", f"{request.n} is more than this service's limit of {limits.max_n}")
    alpha = request.rejection_rate if request.HasField("rejection_rate") else DEFAULT_REJECTION_RATE
    if not (math.isfinite(alpha) and 0 <= alpha < 1):
        raise FieldError("rejection_rate", f"must be in [0, 1), got {alpha}")
    if request.max_new_tokens < 1:
        raise FieldError("max_new_tokens", "must be at least 1")
    if limits.max_context_tokens is not None and request.max_new_tokens >= limits.max_context_tokens:
        raise FieldError("max_new_tokens", f"{request.max_new_tokens} does not fit the generator's context of "
                                           f"{limits.max_context_tokens} tokens")
    # Any finite temperature >= 0 goes to the generator as is; it decides what counts as greedy.
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature >= 0):
        raise FieldError("temperature", f"must be >= 0 (0 = greedy), got {temperature}")
    top_p = request.top_p if request.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise FieldError("top_p", f"must be in (0, 1], got {top_p}")
    if len(request.decision_points) > limits.max_decision_points:
        raise FieldError("decision_points", f"{len(request.decision_points)} positions; the limit is "
                                            f"{limits.max_decision_points}")
    points = sorted(set(request.decision_points))
    if points and points[0] == 0:
        raise FieldError("decision_points", "positions must be at least 1")
    first_decision_tokens = (request.first_decision_tokens if request.HasField("first_decision_tokens")
                             else limits.first_decision_tokens)
    if request.refill and best_of_n:
        raise FieldError("refill", "branches refill what decision points reject; BEST_OF_N has none")
    alpha = 0.0 if best_of_n else alpha
    if request.adaptive_rejection and not best_of_n:
        alpha = AdaptiveRejectionRate(alpha)
    schedule = DecisionSchedule(every_tokens=request.decision_every_tokens, points=tuple(points), enabled=not best_of_n,
                                first_tokens=first_decision_tokens)
    if request.refill and schedule.trigger == MEMORY:
        # A refilled batch keeps its width, so its KV cache would be full again at once.
        raise FieldError("refill", "needs decision points at token positions (decision_every_tokens, decision_points "
                                   "or first_decision_tokens > 0), not memory-driven ones alone")
    return Plan(
        messages=messages,
        n=request.n,
        method=request.method,
        rejection_rate=alpha,
        max_new_tokens=request.max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=request.top_k,
        seed=request.seed if request.HasField("seed") else secrets.randbits(63),
        schedule=schedule,
        return_top=max(1, request.return_top),
        # A refilled batch stays n wide to the end, so no decision point frees memory for good.
        min_tokens_before_full=schedule.min_tokens_before_full(request.max_new_tokens, limits.memory_round_tokens,
                                                               rejecting=alpha > 0 and not request.refill),
        refill=request.refill,
    )


def _messages(request: pb.GenerateRequest, limits: Limits) -> tuple[common_pb2.Message, ...]:
    if request.prompt and request.messages:
        raise FieldError("prompt", "give either prompt or messages, not both")
    if not request.messages:
        if not request.prompt.strip():
            raise FieldError("prompt", "must not be empty")
        _check_bytes("prompt", len(request.prompt.encode()), limits)
        return (common_pb2.Message(role="user", content=request.prompt),)
    if len(request.messages) > limits.max_messages:
        raise FieldError("messages", f"{len(request.messages)} messages; the limit is {limits.max_messages}")
    for position, message in enumerate(request.messages):
        if message.role not in _ROLES:
            raise FieldError(f"messages[{position}].role", f"must be one of {sorted(_ROLES)}, got {message.role!r}")
        if not message.content.strip():
            raise FieldError(f"messages[{position}].content", "must not be empty")
    _check_bytes("messages", sum(len(m.content.encode()) for m in request.messages), limits)
    return tuple(request.messages)


def _check_bytes(field: str, size: int, limits: Limits) -> None:
    if size > limits.max_prompt_bytes:
        raise FieldError(field, f"{size} bytes of text; the limit is {limits.max_prompt_bytes}")
