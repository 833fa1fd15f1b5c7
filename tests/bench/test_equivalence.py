import numpy as np
import pytest

from bench.stats.equivalence import (
    AT_LEAST_M,
    AT_MOST_ONE,
    WITHIN,
    best_of_n_reference,
    compare_with_best_of_n,
    equivalent_n,
    spread,
)
from bench.shared.records import SPECULATIVE_REJECTION, Pool, RunRecord

CURVE = [1.0, 2.0, 4.0, 4.5]  # Best-of-1 .. Best-of-4


@pytest.mark.parametrize(
    "reward, n, bound",
    [
        (1.0, 1.0, WITHIN),
        (1.5, 1.5, WITHIN),
        (2.0, 2.0, WITHIN),
        (3.0, 2.5, WITHIN),
        (4.25, 3.5, WITHIN),
        (4.5, 4.0, WITHIN),
        (0.2, 1.0, AT_MOST_ONE),
        (9.0, 4.0, AT_LEAST_M),
    ],
)
def test_equivalent_n_interpolates_linearly_and_flags_the_ends(reward, n, bound):
    match = equivalent_n(CURVE, reward)
    assert match.n == pytest.approx(n)
    assert match.bound == bound


def test_equivalent_n_takes_the_smallest_n_on_a_flat_curve():
    assert equivalent_n([1.0, 2.0, 2.0, 2.0, 3.0], 2.0).n == pytest.approx(2.0)
    assert equivalent_n([5.0, 5.0, 5.0], 5.0) == equivalent_n([5.0], 5.0)


def test_spread_of_known_values():
    summary = spread([1.0, 2.0, 4.0, 8.0, 16.0])
    assert summary.count == 5
    assert summary.geo_mean == pytest.approx(4.0)
    assert summary.median == pytest.approx(4.0)
    assert (summary.q1, summary.q3) == pytest.approx((2.0, 8.0))
    assert (summary.min, summary.max) == (1.0, 16.0)
    with pytest.raises(ValueError):
        spread([1.0, 0.0])


def test_comparison_averages_seeds_and_prices_best_of_n_at_the_equivalent_n():
    pool = Pool("p", scores=[0.0, 1.0, 2.0, 3.0], decoded_tokens=[100, 100, 100, 100], wall_seconds=[1.0, 1.0, 2.0, 2.0])
    best_of_2, best_of_3 = 14 / 6, 11 / 4  # means of the maxima over the 6 pairs and the 4 triples
    runs = [
        RunRecord("p", SPECULATIVE_REJECTION, 8, 0.5, "memory", reward, decoded_tokens=100, scored_tokens=50, wall_seconds=0.5)
        for reward in (best_of_2, best_of_3)  # two seeds: their mean lies halfway between N = 2 and N = 3
    ]
    (comparison,) = compare_with_best_of_n(runs, [pool])
    assert comparison.runs == 2
    assert comparison.equivalent_n == pytest.approx(2.5)
    assert comparison.bound == WITHIN
    assert comparison.token_cost_ratio == pytest.approx(2.5 * 100 / 100)
    assert comparison.wall_cost_ratio == pytest.approx(2.5 * 1.5 / 0.5)


def test_comparison_needs_a_pool_for_every_prompt():
    run = RunRecord("unpooled", SPECULATIVE_REJECTION, 8, 0.5, "memory", 1.0, 10, 10, 1.0)
    with pytest.raises(KeyError):
        compare_with_best_of_n([run], [])


def test_reference_averages_prompts_up_to_the_smallest_pool():
    pools = [Pool("a", [0.0, 2.0], [10, 30], [1.0, 1.0]), Pool("b", [1.0, 1.0, 4.0], [40, 40, 40], [3.0, 3.0, 3.0])]
    reference = best_of_n_reference(pools)
    assert reference.n == [1, 2]
    assert reference.mean_reward == pytest.approx([(1.0 + 2.0) / 2, (2.0 + np.mean([1.0, 4.0, 4.0])) / 2])
    assert reference.mean_decoded_tokens == pytest.approx([30.0, 60.0])
    assert reference.mean_wall_seconds == pytest.approx([2.0, 4.0])


def test_above_best_of_n0_is_capped_at_n0_and_called_noise_not_a_lower_bound():
    curve = np.linspace(1.0, 2.0, 256)  # a pool of 256 samples, n0 = 128
    from bench.stats.equivalence import ABOVE_CAP

    above_everything = equivalent_n(curve, 5.0, cap=128)
    assert (above_everything.n, above_everything.bound) == (128.0, ABOVE_CAP)  # not ">= 256"
    just_above_n0 = equivalent_n(curve, float(curve[127]) + 1e-6, cap=128)
    assert (just_above_n0.n, just_above_n0.bound) == (128.0, ABOVE_CAP)
    within = equivalent_n(curve, float(curve[63]), cap=128)
    assert within == equivalent_n(curve, float(curve[63])) and within.n == pytest.approx(64.0)
    assert equivalent_n(curve, 0.5, cap=128).bound == AT_MOST_ONE


def test_a_pool_smaller_than_the_cap_still_gives_a_lower_bound():
    assert equivalent_n(CURVE, 9.0, cap=8) == equivalent_n(CURVE, 9.0)
    assert equivalent_n(CURVE, 9.0, cap=8).bound == AT_LEAST_M
