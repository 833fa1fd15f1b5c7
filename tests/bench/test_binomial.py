"""Exact binomial intervals for a share: known Clopper-Pearson values and their defining property."""
import math

import pytest

from bench.stats.binomial import clopper_pearson


@pytest.mark.parametrize("successes, trials, low, high", [
    (28, 30, 0.7793, 0.9918),  # the paired CPU measurement's default: 28 of 30 same responses
    (23, 30, 0.5772, 0.9007),
    (5, 10, 0.1871, 0.8129),
    (0, 10, 0.0, 0.3085),  # 1 - 0.025 ** (1 / 10)
    (10, 10, 0.6915, 1.0),
])
def test_known_clopper_pearson_intervals(successes, trials, low, high):
    interval = clopper_pearson(successes, trials)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-4)
    assert interval.estimate == successes / trials


def test_each_end_leaves_the_stated_tail_probability():
    interval = clopper_pearson(7, 20)

    def at_least(k, n, p):
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))

    assert at_least(7, 20, interval.low) == pytest.approx(0.025, abs=1e-9)
    assert 1 - at_least(8, 20, interval.high) == pytest.approx(0.025, abs=1e-9)


def test_an_impossible_count_is_refused():
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(31, 30)
