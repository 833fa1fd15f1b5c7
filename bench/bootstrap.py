"""Bootstrap percentile intervals over paired measurements, deterministic for a given seed.

A benchmark's units are pairs (one prompt and one seed, each method run on it); resampling pairs
with replacement and recomputing a statistic gives its sampling spread. Every configuration of one
run is resampled with the same draws, so their intervals come from the very same resamples.
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


def percentile_interval(estimate: float, replicates, level: float = LEVEL) -> Interval:
    values = np.asarray(replicates, dtype=np.float64)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def bootstrap(statistic: Callable[[np.ndarray], float], count: int, indices: np.ndarray | None = None,
              level: float = LEVEL) -> Interval:
    """`statistic(index_array)` on all `count` pairs and on each resample of them."""
    draws = resample_indices(count) if indices is None else indices
    everything = np.arange(count)
    return percentile_interval(statistic(everything), [statistic(row) for row in draws], level)


def mean_interval(values, indices: np.ndarray | None = None, level: float = LEVEL) -> Interval:
    array = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda rows: float(array[rows].mean()), array.size, indices, level)


def ratio_of_sums_interval(numerators, denominators, indices: np.ndarray | None = None,
                           level: float = LEVEL) -> Interval:
    """sum(numerators) / sum(denominators) over the pairs: the ratio of total costs, which weighs each
    pair by its size (a geometric mean of per-pair ratios would weigh them equally)."""
    top, bottom = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if top.shape != bottom.shape:
        raise ValueError("numerators and denominators must pair up")
    return bootstrap(lambda rows: float(top[rows].sum() / bottom[rows].sum()), top.size, indices, level)
