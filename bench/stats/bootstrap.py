"""Bootstrap percentile intervals over paired measurements, deterministic for a given seed.

A benchmark's units are pairs (one prompt and one seed, each method run on it); resampling pairs
with replacement and recomputing a statistic gives its sampling spread. Every configuration of one
run is resampled with the same draws, so their intervals come from the very same resamples.

Pairs that share a prompt are not independent draws: seeds of one prompt resemble each other more
than pairs of two prompts do. `clustered_indices` resamples the prompts (each drawn prompt brings
all of its pairs), which is what the intervals must reflect when prompts are few; resampling the
pairs alone treats 10 prompts x 3 seeds as 30 independent draws and runs too narrow.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the measured pairs themselves
    low: float
    high: float
    level: float = LEVEL


def resample_indices(count: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """`resamples` rows of `count` indices drawn with replacement from range(count)."""
    if count < 1:
        raise ValueError("cannot resample an empty set of pairs")
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def clustered_indices(clusters, resamples: int = RESAMPLES, seed: int = 0) -> list[np.ndarray]:
    """`resamples` draws of pair indices: the clusters (pairs' prompt ids, `clusters[i]` for pair i)
    drawn with replacement, each bringing all of its pairs. Clusters are ordered by first appearance,
    so with one pair per cluster the draws are exactly `resample_indices`'s for the same seed."""
    members: dict = {}
    for index, cluster in enumerate(clusters):
        members.setdefault(cluster, []).append(index)
    groups = [np.array(indices) for indices in members.values()]
    chosen = resample_indices(len(groups), resamples, seed)
    return [np.concatenate([groups[c] for c in row]) for row in chosen]


def percentile_interval(estimate: float, replicates, level: float = LEVEL) -> Interval:
    values = np.asarray(replicates, dtype=np.float64)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def bootstrap(statistic: Callable[[np.ndarray], float], count: int, indices=None,
              level: float = LEVEL) -> Interval:
    """`statistic(index_array)` on all `count` pairs and on each resample of them (`indices`: rows of
    `resample_indices` or the arrays of `clustered_indices`)."""
    draws = resample_indices(count) if indices is None else indices
    everything = np.arange(count)
    return percentile_interval(statistic(everything), [statistic(row) for row in draws], level)


def mean_interval(values, indices=None, level: float = LEVEL) -> Interval:
    array = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda rows: float(array[rows].mean()), array.size, indices, level)


def ratio_of_sums_interval(numerators, denominators, indices=None,
                           level: float = LEVEL) -> Interval:
    """sum(numerators) / sum(denominators) over the pairs: the ratio of total costs, which weighs each
    pair by its size (a geometric mean of per-pair ratios would weigh them equally)."""
    top, bottom = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if top.shape != bottom.shape:
        raise ValueError("numerators and denominators must pair up")
    return bootstrap(lambda rows: float(top[rows].sum() / bottom[rows].sum()), top.size, indices, level)
