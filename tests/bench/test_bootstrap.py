"""Bootstrap intervals: they are deterministic for a seed and cover the truth about as often as they claim."""
import numpy as np
import pytest

from bench.stats.bootstrap import clustered_indices, mean_interval, ratio_of_sums_interval, resample_indices


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


def _pairs_of_prompts(prompts: int, seeds: int, spread_between: float, spread_within: float, seed: int = 3):
    """Values of `seeds` pairs per prompt: a prompt effect shared by its pairs plus each pair's own noise."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(scale=spread_between, size=prompts)
    values = np.concatenate([effect + rng.normal(scale=spread_within, size=seeds) for effect in effects])
    return values, [f"p{i}" for i in range(prompts) for _ in range(seeds)]


def test_resampling_prompts_widens_the_interval_when_a_prompt_s_pairs_are_alike():
    values, prompts = _pairs_of_prompts(10, 3, spread_between=1.0, spread_within=0.1)
    pairs = mean_interval(values, resample_indices(30, 1000, seed=0))
    clustered = mean_interval(values, clustered_indices(prompts, 1000, seed=0))
    assert clustered.estimate == pairs.estimate
    # Three near-copies per prompt: the pair bootstrap sees 30 draws where there are 10, about sqrt(3) too narrow.
    assert clustered.high - clustered.low > 1.4 * (pairs.high - pairs.low)


def test_resampling_prompts_adds_nothing_when_pairs_of_a_prompt_are_independent():
    values, prompts = _pairs_of_prompts(40, 3, spread_between=0.0, spread_within=1.0)
    pairs = mean_interval(values, resample_indices(120, 1000, seed=0))
    clustered = mean_interval(values, clustered_indices(prompts, 1000, seed=0))
    assert 0.75 < (clustered.high - clustered.low) / (pairs.high - pairs.low) < 1.33


def test_one_pair_per_prompt_makes_the_clustered_draws_the_pair_draws():
    values = np.random.default_rng(4).normal(size=12)
    prompts = [f"prompt {i}" for i in range(12)]
    draws = clustered_indices(prompts, 300, seed=7)
    assert np.array_equal(np.array(draws), resample_indices(12, 300, seed=7))
    assert mean_interval(values, draws) == mean_interval(values, resample_indices(12, 300, seed=7))


def test_a_drawn_prompt_brings_all_of_its_pairs():
    prompts = ["a", "b", "a", "c", "b", "a"]
    for row in clustered_indices(prompts, 50, seed=1):
        drawn = [prompts[i] for i in row]
        assert all(drawn.count(p) % prompts.count(p) == 0 for p in set(drawn))
        assert len({tuple(sorted(i for i in row if prompts[i] == p)) for p in set(drawn)}) == len(set(drawn))
