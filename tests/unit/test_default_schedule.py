"""A Speculative Rejection request that names no schedule still rejects, whatever its n."""
import pytest

from coordinator.__main__ import parse_args
from coordinator.request import Limits, plan_request
from coordinator.schedule import DEFAULT_FIRST_DECISION_TOKENS, AdaptiveRejectionRate
from specrej.v1 import coordinator_pb2 as pb


def decision_positions(plan):
    """Where the plan's schedule stops to decide when memory never fills."""
    positions, position = [], 1
    while position < plan.max_new_tokens:
        position = plan.schedule.next_stop(position, plan.max_new_tokens)
        if position == 0:
            return positions  # only a full cache would stop it
        positions.append(position)
    return positions


def speculative(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{"prompt": "Name three colors.", "max_new_tokens": 256,
                                 "method": pb.SPECULATIVE_REJECTION, **fields})


@pytest.mark.parametrize("n", [0, 1, 8, 128, 1024])
def test_a_default_request_decides_at_64_tokens_then_at_each_doubling(n):
    plan = plan_request(speculative(n=n), Limits(max_n=1024))
    assert DEFAULT_FIRST_DECISION_TOKENS == 64 and plan.rejection_rate == 0.7
    assert decision_positions(plan) == [64, 128, 256]
    # Sizing and the generator's guarantee depend on the schedule, not on the memory round.
    assert plan.schedule.first_stop(256, memory_round_tokens=1 << 20) == 64


def test_the_coordinator_flag_moves_the_default_and_zero_leaves_only_memory(monkeypatch):
    assert parse_args([]).first_decision_tokens == DEFAULT_FIRST_DECISION_TOKENS
    assert decision_positions(plan_request(speculative(n=8),
                                           Limits(max_n=64, first_decision_tokens=32))) == [32, 64, 128, 256]
    assert decision_positions(plan_request(speculative(n=8), Limits(max_n=64, first_decision_tokens=0))) == []
    monkeypatch.setenv("SPECREJ_FIRST_DECISION_TOKENS", "0")
    assert parse_args([]).first_decision_tokens == 0


def test_a_request_can_ask_for_memory_driven_decisions_only_or_its_own_first_point():
    assert decision_positions(plan_request(speculative(n=8, first_decision_tokens=0), Limits(max_n=64))) == []
    assert decision_positions(plan_request(speculative(n=8, first_decision_tokens=100),
                                           Limits(max_n=64, first_decision_tokens=0))) == [100, 200, 256]
    assert decision_positions(plan_request(speculative(n=8, decision_every_tokens=100),
                                           Limits(max_n=64))) == [100, 200, 256]


def test_best_of_n_never_decides():
    plan = plan_request(speculative(n=8, method=pb.BEST_OF_N, adaptive_rejection=True), Limits(max_n=64))
    assert decision_positions(plan) == [256] and plan.rejection_rate == 0.0
    assert not isinstance(plan.rejection_rate, AdaptiveRejectionRate)


def test_adaptive_rejection_keeps_the_rate_as_its_least_fraction():
    plan = plan_request(speculative(n=8, rejection_rate=0.5, adaptive_rejection=True), Limits(max_n=64))
    assert isinstance(plan.rejection_rate, AdaptiveRejectionRate) and plan.rejection_rate == 0.5
