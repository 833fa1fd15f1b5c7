"""Branches (refill) in the native engine's session: a branch's row starts from a copy of its
parent's keys/values, and its memory comes out of the session's reservation in the shared pool."""
import pytest
import torch

from common.errors import Overloaded
from generator_service.engine import GeneratorEngine
from generator_service.sampling import SamplingParams
from tests.generator.scripted import POEM as MESSAGES, WAIT, close_and_wait

@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=1024**2, max_batch_size=16)
    yield engine
    engine.shutdown()


def open_session(engine, n=6, max_new_tokens=20, min_tokens_before_full=None):
    return engine.open_session(MESSAGES, n=n, max_new_tokens=max_new_tokens,
                               min_tokens_before_full=min_tokens_before_full or max_new_tokens,
                               sampling=SamplingParams(temperature=1.0, seed=5))


def record_logits(engine, session) -> list[tuple[list[int], torch.Tensor]]:
    """Every decode step's (sequence of each row, the rows' logits) for `session`, as the runner
    samples them; undone by stop_recording."""
    steps, runner = [], engine.loop.runner

    def recording(sampled, logits):
        if sampled is session:
            steps.append((session.row_index.tolist(), logits.clone()))
        return type(runner).sample(sampled, logits)

    runner.sample = recording
    return steps


def stop_recording(engine) -> None:
    del engine.loop.runner.sample


def test_a_branch_sees_exactly_its_parents_context(engine):
    session = open_session(engine)
    try:
        session.start().result(WAIT)
        session.advance(6).result(WAIT)
        steps = record_logits(engine, session)
        session.advance(7, keep=[1, 4], fork_from=[4, 1, 4, 4]).result(WAIT)
    finally:
        stop_recording(engine)
        close_and_wait(engine, session)
    rows, logits = steps[0]
    assert rows == [1, 4, 6, 7, 8, 9]
    by_sequence = dict(zip(rows, logits))
    # The first step after the fork reads the parent's keys/values and last token: the same next-token
    # distribution as the parent's (to rounding of where a row sits in its row block).
    for branch, parent in ((6, 4), (7, 1), (8, 4), (9, 4)):
        torch.testing.assert_close(by_sequence[branch], by_sequence[parent], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(by_sequence[1], by_sequence[4], rtol=1e-5, atol=1e-5)
    sequences = session.sequences
    assert [s.tokens[:6] for s in sequences[6:]] == [sequences[p].tokens[:6] for p in (4, 1, 4, 4)]


def test_branches_take_their_memory_from_the_pool_within_the_first_reservation(engine):
    budget = engine.admission.budget_tokens
    session = open_session(engine)
    try:
        session.start().result(WAIT)
        first_reservation = session.reservation_tokens
        session.advance(6).result(WAIT)
        session.prune([2, 3]).result(WAIT)
        pruned_bytes = session.cache.bytes
        # The prune gave back what two rows can never use.
        assert session.reservation_tokens < first_reservation
        assert engine.admission.free_tokens == budget - session.reservation_tokens
        result = session.advance(10, fork_from=[3, 3, 2]).result(WAIT)
        assert session.reservation_tokens <= first_reservation
        assert engine.admission.free_tokens == budget - session.reservation_tokens
        # Five rows, each with room for the whole response, and the prompt once.
        row_bytes = session.max_new_tokens * session.bytes_per_token
        assert session.cache.bytes == 5 * row_bytes == pruned_bytes + 3 * row_bytes
        assert result.kv_cache_bytes == session.cache.bytes + session.prompt_length * session.bytes_per_token
        assert session.cache.bytes <= (session.reservation_tokens - session.prompt_length) * session.bytes_per_token
    finally:
        close_and_wait(engine, session)
    assert engine.admission.free_tokens == budget


def test_branches_whose_memory_another_session_took_meanwhile_are_resource_exhausted(engine):
    budget = engine.admission.budget_tokens
    first = open_session(engine, n=8, max_new_tokens=100)
    try:
        first.start().result(WAIT)
        first.advance(4).result(WAIT)
        first.prune([0, 1]).result(WAIT)  # gives back what six rows would have used
        room = engine.admission.free_tokens - first.prompt_length
        second = open_session(engine, n=16, max_new_tokens=room // 16)
        second.start().result(WAIT)
        with pytest.raises(Overloaded, match="^fork_from: "):
            first.advance(8, fork_from=[0, 1]).result(WAIT)
        close_and_wait(engine, second)
    finally:
        close_and_wait(engine, first)
    assert engine.admission.free_tokens == budget
