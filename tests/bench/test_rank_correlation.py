"""Kendall's tau-b against a brute-force count over every pair of items."""
import itertools
import math

import numpy as np
import pytest

from bench.stats.rank_correlation import kendall_tau


def brute_force_tau_b(x, y):
    concordant = discordant = tied_x = tied_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        tied_x += a == 0
        tied_y += b == 0
        concordant += a * b > 0
        discordant += a * b < 0
    pairs = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))


@pytest.mark.parametrize("seed", range(5))
def test_tau_matches_the_count_over_all_pairs_ties_included(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=25).astype(float)  # many ties
    y = x + rng.normal(scale=2.0, size=25).round()
    assert kendall_tau(x, y) == pytest.approx(brute_force_tau_b(x, y))


def test_the_same_order_is_one_and_the_reverse_minus_one():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_a_scoring_that_ties_everything_has_no_tau():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
