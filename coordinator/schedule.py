"""Speculative Rejection's decisions: when to stop and rank, and whom to keep. Plain Python.

At a decision point every live candidate (running or finished) is ranked by its reward and the
lowest-scoring fraction `alpha` is rejected; finished ones compete like the rest (Sun et al. 2024).
"""
import math
from dataclasses import dataclass

MEMORY = "memory"
INTERVAL = "interval"
SCHEDULE = "schedule"


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


def decide(candidates: list[Ranked], alpha: float, memory_full: bool = False) -> Decision:
    """Keep the best `live - floor(alpha * live)`. When the KV cache is full, at least one running
    candidate must go, or the survivors could not decode another token."""
    ordered = rank(candidates)
    cut = len(ordered) - rejected_count(len(ordered), alpha)
    kept, rejected = ordered[:cut], ordered[cut:]
    running_kept = [c for c in kept if not c.finished]
    if memory_full and len(running_kept) >= 2 and not any(not c.finished for c in rejected):
        weakest = running_kept[-1]
        kept = [c for c in kept if c is not weakest]
        rejected = [weakest, *rejected]
    return Decision(kept, rejected)


@dataclass(frozen=True)
class DecisionSchedule:
    """Where decision points fall, in response tokens. With neither an interval nor explicit points,
    they fall where the generator's KV cache is full (the paper's rule). The cache being full
    always forces a decision point, whatever the schedule."""

    every_tokens: int = 0
    points: tuple[int, ...] = ()
    enabled: bool = True  # Best-of-N has none

    @property
    def trigger(self) -> str:
        return SCHEDULE if self.points else INTERVAL if self.every_tokens else MEMORY

    def next_stop(self, position: int, max_new_tokens: int) -> int:
        """Response length to decode up to before the next decision; 0 = until the cache is full."""
        if not self.enabled:
            return max_new_tokens
        if self.points:
            later = [p for p in self.points if p > position]
            return min(later[0], max_new_tokens) if later else max_new_tokens
        if self.every_tokens:
            return min((position // self.every_tokens + 1) * self.every_tokens, max_new_tokens)
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
