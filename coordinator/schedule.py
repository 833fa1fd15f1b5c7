"""Speculative Rejection's decisions: when to stop and rank, and whom to keep. Plain Python.

At a decision point every live candidate (running or finished) is ranked by its reward and the
lowest-scoring fraction `alpha` is rejected; finished ones compete like the rest (Sun et al. 2024).
"""
import math
from dataclasses import dataclass

MEMORY = "memory"
INTERVAL = "interval"
SCHEDULE = "schedule"
DOUBLING = "doubling"

# Where a request that names no schedule decides first, in response tokens; then at twice, four
# times ... that length. Chosen from paired runs at n0 = 128 and 256 tokens (README, "The paired CPU
# measurement"): at alpha 0.7 a first decision at 64 tokens returned Best-of-n0's response on 28 of
# 30 pairs; at 48 tokens on 26 and at 32 on 24, each with a reward loss whose interval excludes 0.
DEFAULT_FIRST_DECISION_TOKENS = 64

# The adaptive rule (see `adaptive_rejected_count`): candidates more than this many robust standard
# deviations below the best are rejected, up to ADAPTIVE_MAX_RATE of them.
ADAPTIVE_MARGIN = 2.0
ADAPTIVE_MAX_RATE = 0.9
_MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation over its median absolute deviation


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float
    finished: bool


@dataclass(frozen=True)
class Decision:
    kept: list[Ranked]  # best first
    rejected: list[Ranked]

    @property
    def cutoff_score(self) -> float:
        return self.kept[-1].score


def rank(candidates: list[Ranked]) -> list[Ranked]:
    """Best first; equal scores keep the lower index first, so ranking is deterministic."""
    return sorted(candidates, key=lambda c: (-c.score, c.index))


def rejected_count(live: int, alpha: float) -> int:
    """How many of `live` candidates a decision point rejects; at least one always survives."""
    return min(math.floor(alpha * live), live - 1) if live else 0


class AdaptiveRejectionRate(float):
    """A rejection rate that is the least fraction rejected: `decide` rejects more of the candidates
    whose partial rewards fall far below the best (`adaptive_rejected_count`). Its value as a float
    is that least fraction, so it reads like a fixed rate wherever only the number matters."""

    def __repr__(self) -> str:
        return f"AdaptiveRejectionRate({float(self)!r})"


def adaptive_rejected_count(scores: list[float], alpha: float, margin: float = ADAPTIVE_MARGIN,
                            max_rate: float = ADAPTIVE_MAX_RATE) -> int:
    """How many to reject when the partial rewards themselves say how sure the ranking is.

    The scores' noise is estimated robustly from their own spread (1.4826 x the median absolute
    deviation, the standard deviation of a normal bulk); every candidate more than `margin` such
    deviations below the best is rejected. When the best stand far apart from the bulk (a prompt
    whose candidates differ clearly) that is most of them; when the scores are bunched, the ranking
    is mostly noise and only the least fraction `alpha` goes. The count lies between
    floor(alpha x live) and floor(max(alpha, max_rate) x live), and one candidate always survives."""
    live = len(scores)
    least, most = rejected_count(live, alpha), rejected_count(live, max(alpha, max_rate))
    if live < 3:
        return least
    values = sorted(scores)
    median = values[live // 2] if live % 2 else (values[live // 2 - 1] + values[live // 2]) / 2
    deviations = sorted(abs(v - median) for v in values)
    mad = deviations[live // 2] if live % 2 else (deviations[live // 2 - 1] + deviations[live // 2]) / 2
    sigma = _MAD_TO_SIGMA * mad
    if not sigma > 0:
        return least  # most scores are equal: nothing tells them apart
    threshold = values[-1] - margin * sigma
    far_below = sum(v < threshold for v in values)
    return min(max(far_below, least), most)


def decide(candidates: list[Ranked], alpha: float, memory_full: bool = False) -> Decision:
    """Keep the best `live - floor(alpha * live)` (with an AdaptiveRejectionRate, the best `live -
    adaptive_rejected_count`). When the KV cache is full, at least one running candidate must go,
    or the survivors could not decode another token."""
    ordered = rank(candidates)
    rejected_total = (adaptive_rejected_count([c.score for c in ordered], alpha)
                      if isinstance(alpha, AdaptiveRejectionRate) else rejected_count(len(ordered), alpha))
    cut = len(ordered) - rejected_total
    kept, rejected = ordered[:cut], ordered[cut:]
    running_kept = [c for c in kept if not c.finished]
    if memory_full and len(running_kept) >= 2 and not any(not c.finished for c in rejected):
        weakest = running_kept[-1]
        kept = [c for c in kept if c is not weakest]
        rejected = [weakest, *rejected]
    return Decision(kept, rejected)


@dataclass(frozen=True)
class DecisionSchedule:
    """Where decision points fall, in response tokens: at explicit points, every `every_tokens`, or
    at `first_tokens` and then at each doubling of the response (first, 2 x first, 4 x first, ...).
    With none of these they fall only where the generator's KV cache is full (the paper's rule).
    The cache being full always forces a decision point, whatever the schedule."""

    every_tokens: int = 0
    points: tuple[int, ...] = ()
    enabled: bool = True  # Best-of-N has none
    first_tokens: int = 0  # doubling from here; used when there are neither points nor an interval

    @property
    def trigger(self) -> str:
        if self.points:
            return SCHEDULE
        return INTERVAL if self.every_tokens else DOUBLING if self.first_tokens else MEMORY

    def next_stop(self, position: int, max_new_tokens: int) -> int:
        """Response length to decode up to before the next decision; 0 = until the cache is full."""
        if not self.enabled:
            return max_new_tokens
        if self.points:
            later = [p for p in self.points if p > position]
            return min(later[0], max_new_tokens) if later else max_new_tokens
        if self.every_tokens:
            return min((position // self.every_tokens + 1) * self.every_tokens, max_new_tokens)
        if self.first_tokens:
            stop = self.first_tokens
            while stop <= position:
                stop *= 2
            return min(stop, max_new_tokens)
        return 0

    def first_stop(self, max_new_tokens: int, memory_round_tokens: int) -> int:
        """Tokens every candidate must reach before the first decision point; sizes n."""
        stop = self.next_stop(0, max_new_tokens)
        return stop if stop else min(memory_round_tokens, max_new_tokens)

    def min_tokens_before_full(self, max_new_tokens: int, memory_round_tokens: int, rejecting: bool) -> int:
        """Room every candidate needs in the KV cache: up to the first decision point, or the whole
        response when no decision point will ever free memory (Best-of-N, alpha = 0)."""
        return self.first_stop(max_new_tokens, memory_round_tokens) if rejecting else max_new_tokens


def cannot_grow(running: int, memory_full: bool, steps: int) -> bool:
    """A lone running candidate that fills the whole cache can decode no further: it ends at length."""
    return memory_full and steps == 0 and running == 1
