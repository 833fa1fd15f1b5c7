"""Kendall's tau-b between two scorings of the same items (ties counted as neither order)."""
from __future__ import annotations

import numpy as np


def kendall_tau(first, second) -> float:
    """tau-b = (concordant - discordant) / sqrt((pairs - ties in first) * (pairs - ties in second));
    NaN when either scoring ties every pair (no order to agree with). O(n^2) memory: a decision
    point holds at most a few thousand candidates."""
    x, y = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("two scorings of the same items are needed")
    upper = np.triu_indices(x.size, k=1)
    dx = np.sign(x[:, None] - x[None, :])[upper]
    dy = np.sign(y[:, None] - y[None, :])[upper]
    untied_x, untied_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float((dx * dy).sum() / np.sqrt(float(untied_x) * float(untied_y)))
