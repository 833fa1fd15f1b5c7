"""Refill end to end: the coordinator, generator (native backend) and reward service as real gRPC
servers on loopback, on the tiny model."""
import pytest

from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc
from .observe import metric, scrape

N, MAX_NEW_TOKENS = 8, 32


@pytest.fixture(scope="module")
def coordinator(tiny_stack):
    return coordinator_pb2_grpc.CoordinatorStub(tiny_stack.channel)


def refilled(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{**dict(prompt="Describe a lighthouse in two sentences.", n=N,
                                        max_new_tokens=MAX_NEW_TOKENS, seed=42, decision_every_tokens=8,
                                        rejection_rate=0.5, refill=True, return_top=N), **fields})


def test_refill_branches_the_survivors_at_each_decision_point_and_returns_a_best_response(coordinator, tiny_stack):
    generator_before = scrape(tiny_stack.generator)
    response = coordinator.Generate(refilled(), timeout=120)
    rounds = response.stats.rounds
    assert [r.token_position for r in rounds] == [8, 16, 24]
    assert rounds[0].active_before == N and rounds[0].branched == rounds[0].rejected == N // 2
    # The batch stays N wide: the rows each decision point's rejections (and ends) freed are branched again.
    assert all(r.branched > 0 and r.kept - r.finished_kept + r.branched == N for r in rounds)
    best = response.best
    assert best.text and best.finish_reason in ("stop", "length") and best.num_tokens <= MAX_NEW_TOKENS
    assert response.ranked[0] == best and len(response.ranked) == N
    branches = [c for c in response.ranked if c.index >= N]
    assert branches and all(c.index < N + sum(r.branched for r in rounds) for c in branches)
    # A branch's count includes its parent's tokens; the tokens decoded count each token once.
    assert all(c.num_tokens == MAX_NEW_TOKENS for c in branches if c.finish_reason == "length")
    generated = metric(scrape(tiny_stack.generator), "specrej_generator_tokens_total") - metric(
        generator_before, "specrej_generator_tokens_total")
    assert generated == response.stats.generated_tokens


def test_the_same_seed_gives_the_same_branches_and_without_refill_there_are_none(coordinator):
    first = coordinator.Generate(refilled(), timeout=120)
    again = coordinator.Generate(refilled(), timeout=120)
    assert list(first.ranked) == list(again.ranked)
    plain = coordinator.Generate(refilled(refill=False), timeout=120)
    assert all(r.branched == 0 for r in plain.stats.rounds)
    assert all(c.index < N for c in plain.ranked)
