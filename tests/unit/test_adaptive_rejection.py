"""The adaptive rejection rule: how many it rejects follows how far the scores stand apart."""
import random

import pytest

from coordinator.schedule import (
    ADAPTIVE_MAX_RATE,
    AdaptiveRejectionRate,
    Ranked,
    adaptive_rejected_count,
    decide,
    rejected_count,
)


def spread_out(live, rng):
    return [rng.gauss(0, 1) for _ in range(live)]


@pytest.mark.parametrize("live", [1, 2, 3, 8, 32, 128])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7])
def test_count_lies_between_the_least_rate_and_the_most(live, alpha):
    rng = random.Random(live)
    for _ in range(20):
        scores = spread_out(live, rng)
        scores[rng.randrange(live)] += rng.choice([0, 10, -10])
        count = adaptive_rejected_count(scores, alpha)
        assert rejected_count(live, alpha) <= count <= rejected_count(live, max(alpha, ADAPTIVE_MAX_RATE))
        assert count <= live - 1 or live == 0


def test_bunched_scores_reject_only_the_least_fraction():
    scores = [0.01 * i for i in range(32)]  # evenly spread: the best is not far above anyone
    assert adaptive_rejected_count(scores, 0.5) == 16


def test_a_clear_leader_lets_it_reject_up_to_the_most():
    scores = [0.01 * i for i in range(31)] + [100.0]  # one candidate far above a tight bulk
    assert adaptive_rejected_count(scores, 0.5) == rejected_count(32, ADAPTIVE_MAX_RATE) == 28


def test_it_ignores_where_and_at_what_scale_the_scores_lie():
    rng = random.Random(3)
    for _ in range(50):
        scores = spread_out(64, rng) + [4.0, 5.0]
        shifted = [3.0 * s - 17.0 for s in scores]
        assert adaptive_rejected_count(scores, 0.5) == adaptive_rejected_count(shifted, 0.5)


def test_equal_scores_tell_nothing_and_reject_the_least_fraction():
    assert adaptive_rejected_count([1.5] * 10, 0.3) == 3


def test_decide_with_an_adaptive_rate_keeps_the_best():
    scores = [0.01 * i for i in range(15)] + [100.0]
    candidates = [Ranked(i, s, False) for i, s in enumerate(scores)]
    decision = decide(candidates, AdaptiveRejectionRate(0.5))
    assert [c.index for c in decision.kept] == [15, 14]  # 16 - floor(0.9 * 16) = 2 kept
    fixed = decide(candidates, 0.5)
    assert len(fixed.kept) == 8
    assert float(AdaptiveRejectionRate(0.5)) == 0.5
