"""Exact (Clopper-Pearson) intervals for a share of successes, by inverting binomial tail sums.

A share such as "28 of 30 pairs returned the same response" is a count of successes in n trials;
its bootstrap percentile interval collapses onto 100 % whenever the resamples seldom miss the few
failures. The exact interval holds its level for every n: its lower end is the p at which seeing
k or more successes has probability (1 - level) / 2, its upper end the p at which seeing k or
fewer has that probability. Each tail sum is monotone in p, so bisection finds it.
"""
from __future__ import annotations

import math

from bench.stats.bootstrap import LEVEL, Interval

_BISECTIONS = 60  # halves [0, 1] to about 1e-18, below float resolution


def _log_pmf(successes: int, trials: int, p: float) -> float:
    return (math.lgamma(trials + 1) - math.lgamma(successes + 1) - math.lgamma(trials - successes + 1)
            + successes * math.log(p) + (trials - successes) * math.log1p(-p))


def _at_most(successes: int, trials: int, p: float) -> float:
    """P(X <= successes) for X ~ Binomial(trials, p), 0 < p < 1."""
    return math.fsum(math.exp(_log_pmf(i, trials, p)) for i in range(successes + 1))


def _solve(decreasing, target: float) -> float:
    """The p in (0, 1) where `decreasing(p)` falls through `target`."""
    low, high = 0.0, 1.0
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if decreasing(middle) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> Interval:
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    tail = (1 - level) / 2
    # P(X >= k) = 1 - P(X <= k - 1) grows with p; P(X <= k) falls with p.
    low = 0.0 if successes == 0 else _solve(lambda p: _at_most(successes - 1, trials, p), 1 - tail)
    high = 1.0 if successes == trials else _solve(lambda p: _at_most(successes, trials, p), tail)
    return Interval(successes / trials, low, high, level)
