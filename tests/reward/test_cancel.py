"""A Score call that its caller cancels, or whose deadline passes, stops its model work between
forward passes, on a real grpc.aio server on loopback; the service then answers the next call."""
import time

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from reward_service.engine import ScoringEngine
from reward_service.limits import InputLimits
from reward_service.scorers import Item, load_scorer
from reward_service.servicer import RewardServicer
from reward_service.sessions import SessionCache
from tests.reward.conftest import reference_scores
from tests.reward.test_servicer import AS_DICTS, LoopbackReward, whole

BUDGET = 16  # tokens per forward pass: a large call takes hundreds of passes
LARGE = [f"Response {n}: apples, pears and figs grow on trees in warm places and taste sweet when ripe."
         for n in range(600)]


def abandoned() -> float:
    """Calls whose model work stopped before their end."""
    return REGISTRY.get_sample_value("specrej_reward_abandoned_total", {"service": "reward"}) or 0.0


def taken_up() -> float:
    """Calls the model has taken from the queue."""
    return REGISTRY.get_sample_value("specrej_admission_wait_seconds_count", {"service": "reward"}) or 0.0


def passes() -> float:
    return REGISTRY.get_sample_value("specrej_reward_batch_size_count", {"service": "reward"}) or 0.0


def wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    scorer = load_scorer("lm-logprob", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=BUDGET)
    engine = ScoringEngine(scorer, sessions=SessionCache(1 << 30), batch_window_seconds=0,
                           limits=InputLimits(max_context=1024, max_items=len(LARGE)))
    loopback = LoopbackReward(RewardServicer(engine, model_name="tiny"))
    yield engine, loopback.stub
    loopback.stop()
    engine.close()


def large_call_tokens(engine) -> int:
    _, bodies = engine.scorer.tokenize(AS_DICTS, [Item(r) for r in LARGE])
    return sum(len(b) for b in bodies)


def assert_answers_next_call(engine, stub) -> None:
    small = stub.Score(whole(["An apple.", "Figs"], [True, False]), timeout=60)
    assert list(small.scores) == pytest.approx(
        reference_scores(engine.scorer, AS_DICTS, ["An apple.", "Figs"], [True, False]), abs=1e-4)
    assert engine.queued == 0 and engine.sessions.nbytes == 0 and len(engine.sessions) == 0


def test_a_cancelled_score_stops_between_passes(served):
    engine, stub = served
    before, passes_before, taken = abandoned(), passes(), taken_up()
    call = stub.Score.future(whole(LARGE, [True] * len(LARGE)), timeout=600)
    assert wait_for(lambda: taken_up() == taken + 1)
    call.cancel()
    assert wait_for(lambda: abandoned() == before + 1)
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    # Reading it all takes at least this many passes; it stopped well before.
    assert passes() - passes_before < large_call_tokens(engine) / BUDGET
    assert_answers_next_call(engine, stub)


def test_a_score_past_its_deadline_stops_between_passes(served):
    engine, stub = served
    passes_before = passes()
    with pytest.raises(grpc.RpcError) as error:
        stub.Score(whole(LARGE, [True] * len(LARGE)), timeout=1.0)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_answers_next_call(engine, stub)
    # The next call ran after the expired one had stopped, and both together took fewer passes than
    # the expired one alone would have.
    assert passes() - passes_before < large_call_tokens(engine) / BUDGET
