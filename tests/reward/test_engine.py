"""The scoring engine's admission: requests run together, a full queue is refused at once, and input
out of bounds is refused before any model work."""
import time

import pytest
from prometheus_client import REGISTRY

from common.errors import DeadlineExceeded, FieldError, Overloaded
from reward_service.engine import ScoringEngine
from reward_service.limits import InputLimits
from reward_service.scorers import Item
from reward_service.sessions import SessionCache
from tests.reward.conftest import MESSAGES, reference_scores


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": "reward"}) or 0.0


def engine_for(scorer, **options) -> ScoringEngine:
    options.setdefault("batch_window_seconds", 0)
    return ScoringEngine(scorer, sessions=SessionCache(1 << 30), **options)


def test_requests_arriving_within_the_window_share_one_batch(logprob):
    engine = engine_for(logprob, batch_window_seconds=0.3)
    try:
        batches = sample("specrej_reward_score_seconds_count")
        conversations = [[{"role": "user", "content": f"Name {n} fruits."}] for n in ("two", "three", "four")]
        futures = [engine.submit(m, [Item("Apples and pears.", True), Item("Figs", False)]) for m in conversations]
        results = [f.result(timeout=30) for f in futures]
        assert sample("specrej_reward_score_seconds_count") == batches + 1
        for messages, scored in zip(conversations, results):
            assert scored.scores == pytest.approx(
                reference_scores(logprob, messages, ["Apples and pears.", "Figs"], [True, False]), abs=1e-4)
    finally:
        engine.close()


def test_a_full_queue_refuses_at_once_with_a_retry_hint(logprob):
    engine = engine_for(logprob, batch_window_seconds=0.5, max_queued=1)
    try:
        rejected = sample("specrej_admission_rejected_total")
        waits = sample("specrej_admission_wait_seconds_count")
        first = engine.submit(MESSAGES, [Item("Apples.", True)])
        began = time.monotonic()
        with pytest.raises(Overloaded) as error:
            engine.submit(MESSAGES, [Item("Pears.", True)])
        assert time.monotonic() - began < 0.1
        assert error.value.retry_after_seconds > 0
        assert sample("specrej_admission_rejected_total") == rejected + 1
        assert len(first.result(timeout=30).scores) == 1
        assert sample("specrej_admission_wait_seconds_count") == waits + 1
        assert sample("specrej_admission_queued") == 0
    finally:
        engine.close()


@pytest.mark.parametrize("messages, items, field", [
    ([], [Item("Apples.")], "messages"),
    ([{"role": "user", "content": "fruit? " * 400}], [Item("Apples.")], "messages"),
    (MESSAGES, [Item("Apples."), Item("Apples are nice, " * 4)], "items[1].response"),
    (MESSAGES, [Item("Apples.")] * 5, "items"),
    (MESSAGES, [Item("Apples.")] * 4, None),  # at the limits: scored
])
def test_input_out_of_bounds_is_refused_naming_the_field(logprob, messages, items, field):
    limits = InputLimits(max_context=1024, max_items=4, max_messages=2, max_prompt_tokens=300,
                         max_response_tokens=10)
    engine = engine_for(logprob, limits=limits)
    try:
        batches = sample("specrej_reward_score_seconds_count")
        if field is None:
            assert len(engine.submit(messages, items).result(timeout=30).scores) == 4
            return
        with pytest.raises(FieldError) as error:
            engine.submit(messages, items)
        assert str(error.value).startswith(f"{field}: ")
        assert sample("specrej_reward_score_seconds_count") == batches
        assert engine.queued == 0
    finally:
        engine.close()


def test_too_many_messages_and_repeated_candidates_are_refused(logprob):
    engine = engine_for(logprob, limits=InputLimits(max_context=1024, max_messages=2))
    try:
        with pytest.raises(FieldError, match=r"^messages: 3 messages; the limit is 2"):
            engine.submit(MESSAGES * 3, [Item("Apples.")])
        with pytest.raises(FieldError, match=r"^items\[1\].candidate: candidate 4 appears twice"):
            engine.submit(MESSAGES, [Item("Apples.", candidate=4), Item("Pears.", candidate=4)],
                          session=engine.open_session())
    finally:
        engine.close()


def test_the_default_response_limit_is_the_context_left_after_the_prompt(logprob):
    engine = engine_for(logprob, limits=InputLimits(max_context=40))
    try:
        with pytest.raises(FieldError, match=r"^items\[0\].response: \d+ tokens; the limit is \d+"):
            engine.submit(MESSAGES, [Item("Apples are nice, " * 10)])
    finally:
        engine.close()


def test_a_request_whose_deadline_passed_in_the_queue_is_not_scored(logprob):
    engine = engine_for(logprob)
    try:
        future = engine.submit(MESSAGES, [Item("Apples.")], deadline=time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded):
            future.result(timeout=30)
    finally:
        engine.close()
