"""Best-of-N expectations computed exactly from a finite pool of scored samples.

Drawing N of the pool's M samples without replacement, the i-th smallest score (1-based, after an
ascending sort) is the maximum with probability C(i-1, N-1) / C(M, N): the other N-1 draws must all
come from the i-1 samples below it. This stays exact with ties, because samples are told apart by
their position in the sort, not by their score.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def expected_max_curve(scores: Sequence[float], max_n: int | None = None) -> np.ndarray:
    """E[max of N draws without replacement] for N = 1..max_n (default M); element N-1 is for N.

    Binomial coefficients overflow long before M = 10,000, so the weights are carried from N to
    N+1 by their ratio, C(i-1, N)/C(i-1, N-1) * C(M, N)/C(M, N+1) = (i-N)/N * (N+1)/(M-N), which is
    at most a few units and never overflows. For a fixed i the weight first grows and then shrinks
    with N, so a weight that underflows to zero would have stayed negligible.
    Cost: the sort, then O(M - N) per N, i.e. O(M * max_n) in all (M = 10,000 takes well under a second).
    """
    sorted_scores = np.sort(np.asarray(scores, dtype=np.float64))
    pool_size = sorted_scores.size
    if pool_size == 0:
        raise ValueError("the pool of scores is empty")
    max_n = pool_size if max_n is None else max_n
    if not 1 <= max_n <= pool_size:
        raise ValueError(f"max_n must lie in [1, {pool_size}], got {max_n}")

    ranks = np.arange(1, pool_size + 1, dtype=np.float64)
    weights = np.full(pool_size, 1.0 / pool_size)  # N = 1: every sample is the maximum once
    curve = np.empty(max_n)
    curve[0] = sorted_scores.mean()
    for n in range(1, max_n):
        # Only ranks i >= n+1 can be the maximum of n+1 draws; the factor is zero at i = n.
        live = slice(n, pool_size)
        weights[live] *= (ranks[live] - n) * ((n + 1) / (n * (pool_size - n)))
        weights[n - 1] = 0.0
        # The weights sum to one exactly; renormalising keeps rounding from accumulating over N.
        weights[live] /= weights[live].sum()
        curve[n] = weights[live] @ sorted_scores[live]
    return curve


def expected_cost(pool_costs: Sequence[float], n: float) -> float:
    """Expected total cost (decoded tokens, seconds) of N samples drawn from the pool: N times the mean.

    Linearity of expectation makes this exact for draws without replacement; `n` may be fractional
    for an interpolated Best-of-N size (see `equivalence.equivalent_n`).
    """
    return float(n) * float(np.mean(pool_costs))


def win_probability(scores: Sequence[float], reward: float, n: float) -> float:
    """P(`reward` beats the maximum of N draws without replacement from the pool), a tie counting half.

    The maximum lies below `reward` when all N draws come from the k samples below it, which has
    probability C(k, N) / C(M, N); at or below, likewise with the samples at or below it. A fractional
    N (Best-of-N sized to a token count) is read linearly between the integer sizes around it, as the
    Best-of-N curve is, and N is held within [1, M].
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    pool_size = ordered.size
    if pool_size == 0:
        raise ValueError("the pool of scores is empty")
    below = int(np.searchsorted(ordered, reward, side="left"))
    at_or_below = int(np.searchsorted(ordered, reward, side="right"))

    def all_from(k: int, draws: int) -> float:
        if k < draws:
            return 0.0
        return math.exp(math.lgamma(k + 1) - math.lgamma(k - draws + 1)
                        - math.lgamma(pool_size + 1) + math.lgamma(pool_size - draws + 1))

    def at(draws: int) -> float:
        return 0.5 * (all_from(below, draws) + all_from(at_or_below, draws))

    n = min(max(float(n), 1.0), float(pool_size))
    lower = math.floor(n)
    fraction = n - lower
    return at(lower) if fraction == 0 else (1 - fraction) * at(lower) + fraction * at(lower + 1)
