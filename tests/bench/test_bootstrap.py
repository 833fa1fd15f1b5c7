"""Bootstrap intervals: they are deterministic for a seed and cover the truth about as often as they claim."""
import numpy as np
import pytest

from bench.bootstrap import mean_interval, ratio_of_sums_interval, resample_indices


def test_the_same_seed_gives_the_same_interval():
    values = np.random.default_rng(1).normal(size=20)
    assert mean_interval(values, resample_indices(20, 500, seed=4)) == \
        mean_interval(values, resample_indices(20, 500, seed=4))
    assert mean_interval(values) == mean_interval(values)  # the default draws are seeded too


def test_a_95_percent_interval_for_a_mean_covers_the_true_mean_most_of_the_time():
    rng = np.random.default_rng(2)
    draws = resample_indices(30, 400, seed=0)
    covered = 0
    for _ in range(200):
        interval = mean_interval(rng.normal(loc=1.0, scale=2.0, size=30), draws)
        covered += interval.low <= 1.0 <= interval.high
    # Percentile intervals run a little short on 30 points; 200 trials leave about +-3 points of noise.
    assert 0.86 <= covered / 200 <= 0.99


def test_a_ratio_of_sums_weighs_pairs_by_their_size_and_brackets_its_estimate():
    interval = ratio_of_sums_interval([10, 10, 300], [5, 10, 100], resample_indices(3, 300, seed=0))
    assert interval.estimate == pytest.approx(320 / 115)  # not the mean of 2, 1 and 3
    assert interval.low <= interval.estimate <= interval.high
    assert 1.0 <= interval.low and interval.high <= 3.0


def test_identical_pairs_give_a_point_interval():
    interval = mean_interval([0.25] * 12)
    assert (interval.low, interval.estimate, interval.high) == pytest.approx((0.25, 0.25, 0.25))


def test_nothing_to_resample_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        resample_indices(0)
