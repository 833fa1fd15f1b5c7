import itertools

import numpy as np
import pytest

from bench.stats.order_stats import expected_cost, expected_max_curve, win_probability


def brute_force_curve(scores):
    """Mean of the maximum over every N-subset of sample positions (ties are distinct samples)."""
    return [np.mean([max(subset) for subset in itertools.combinations(scores, n)]) for n in range(1, len(scores) + 1)]


@pytest.mark.parametrize(
    "scores",
    [
        [0.3],
        [2.0, -1.0],
        [5.0, 1.0, 3.0, 2.0, 4.0],
        [1.0, 1.0, 1.0, 1.0],  # all tied
        [3.0, 1.0, 1.0, 2.0, 5.0, 5.0, 0.0, 2.0],  # ties at the top and in the middle
        list(np.random.default_rng(0).normal(size=8)),
    ],
)
def test_matches_enumeration_of_all_subsets(scores):
    np.testing.assert_allclose(expected_max_curve(scores), brute_force_curve(scores), rtol=1e-12, atol=1e-12)


def test_ends_are_mean_and_max_and_curve_never_decreases():
    scores = np.random.default_rng(1).gamma(2.0, size=300)
    curve = expected_max_curve(scores)
    assert curve[0] == pytest.approx(scores.mean())
    assert curve[-1] == pytest.approx(scores.max())
    assert np.all(np.diff(curve) >= -1e-12)


def test_max_n_truncates_the_same_curve():
    scores = np.random.default_rng(2).normal(size=50)
    np.testing.assert_allclose(expected_max_curve(scores, max_n=10), expected_max_curve(scores)[:10])


def test_large_pool_does_not_overflow():
    scores = np.random.default_rng(3).normal(size=10_000)
    curve = expected_max_curve(scores)
    assert np.all(np.isfinite(curve))
    assert curve[-1] == pytest.approx(scores.max())
    # E[max of 2] from a pool is E|X - Y| / 2 above the mean; for a normal pool about 1/sqrt(pi).
    assert curve[1] - curve[0] == pytest.approx(1 / np.sqrt(np.pi), rel=0.05)


def test_rejects_empty_pool_and_bad_max_n():
    with pytest.raises(ValueError):
        expected_max_curve([])
    with pytest.raises(ValueError):
        expected_max_curve([1.0, 2.0], max_n=3)


def test_expected_cost_is_n_times_mean():
    assert expected_cost([10, 20, 30], 4) == pytest.approx(80.0)
    assert expected_cost([10, 20, 30], 2.5) == pytest.approx(50.0)


def brute_force_win(scores, reward, n):
    """Over every N-subset of sample positions: 1 when `reward` beats its maximum, 1/2 on a tie."""
    return np.mean([1.0 if reward > max(s) else 0.5 if reward == max(s) else 0.0
                    for s in itertools.combinations(scores, n)])


@pytest.mark.parametrize("reward", [-1.0, 0.0, 1.0, 1.5, 2.0, 2.5, 5.0, 6.0])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_the_win_probability_matches_enumeration_of_all_subsets(reward, n):
    scores = [3.0, 1.0, 1.0, 2.0, 5.0, 5.0, 0.0, 2.0]  # ties at the top and in the middle
    assert win_probability(scores, reward, n) == pytest.approx(brute_force_win(scores, reward, n), abs=1e-12)


def test_a_fractional_best_of_n_wins_between_its_neighbours_and_n_stays_within_the_pool():
    scores = list(np.random.default_rng(2).normal(size=20))
    reward = float(np.quantile(scores, 0.8))
    two, three = win_probability(scores, reward, 2), win_probability(scores, reward, 3)
    assert win_probability(scores, reward, 2.25) == pytest.approx(0.75 * two + 0.25 * three)
    assert three < two  # a larger Best-of-N is harder to beat
    assert win_probability(scores, reward, 0.3) == win_probability(scores, reward, 1)
    assert win_probability(scores, reward, 500) == win_probability(scores, reward, 20) == 0.0
    assert win_probability(scores, max(scores) + 1, 500) == 1.0
