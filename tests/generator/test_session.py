"""The generator's session alone, on a tiny random model: pruning, memory, seeds, limits."""
import pytest
import torch

from common.errors import FieldError
from generator_service.decoder import DEFAULT_ROW_BLOCK
from generator_service.engine import GeneratorEngine
from generator_service.sampling import SamplingParams
from tests.generator.scripted import POEM as MESSAGES, WAIT, close_and_wait

@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=64 * 1024**2, max_batch_size=64)
    yield engine
    engine.shutdown()


def run(engine, *, n=12, max_new_tokens=30, seed=3, prune_at=None, keep=(), temperature=1.0, top_p=1.0):
    session = engine.open_session(MESSAGES, n=n, max_new_tokens=max_new_tokens, min_tokens_before_full=0,
                                  sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=seed))
    try:
        session.start().result(WAIT)
        before = after = None
        if prune_at:
            before = session.advance(prune_at).result(WAIT).kv_cache_bytes
            after = session.prune(list(keep)).result(WAIT).kv_cache_bytes
        session.advance(0).result(WAIT)
        return [s.tokens for s in session.sequences], before, after, session
    finally:
        close_and_wait(engine, session)


@pytest.mark.parametrize("row_block", [DEFAULT_ROW_BLOCK, 7, 0])
def test_pruned_survivors_decode_exactly_what_they_would_have_without_the_prune(engine, row_block):
    engine.decoder.row_block = row_block
    try:
        unpruned, *_ = run(engine)
        keep = [0, 5, 6, 11]
        pruned, *_ = run(engine, prune_at=9, keep=keep)
    finally:
        engine.decoder.row_block = DEFAULT_ROW_BLOCK
    for index in keep:
        assert pruned[index] == unpruned[index]
    for index in set(range(12)) - set(keep):
        assert pruned[index] == unpruned[index][:9]  # rejected ones stop where they were cut


def test_kv_cache_bytes_after_a_prune_are_proportional_to_the_survivors(engine):
    _, before, after, session = run(engine, n=16, prune_at=5, keep=[1, 2, 3, 4])
    prompt_bytes = session.prompt_length * engine.decoder.kv_bytes_per_token()
    assert before - prompt_bytes == 4 * (after - prompt_bytes)


def test_a_prune_that_keeps_no_running_candidate_frees_every_row(engine):
    """At a decision point the survivors may all have finished: every running row goes."""
    tokens, before, after, session = run(engine, prune_at=9, keep=[])
    assert before > 0 and after == session.prompt_length * engine.decoder.kv_bytes_per_token()
    assert all(s.finish_reason in ("rejected", "stop") for s in session.sequences)
    assert all(len(t) <= 9 for t in tokens)


def test_a_fixed_seed_reproduces_and_another_seed_differs(engine):
    first, *_ = run(engine, seed=11)
    assert first == run(engine, seed=11)[0]
    assert first != run(engine, seed=12)[0]
    assert len({tuple(tokens) for tokens in first}) == len(first)  # candidates differ from each other


def test_greedy_decoding_matches_hugging_face_generate(engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    tokens, *_ = run(engine, n=2, max_new_tokens=12, temperature=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt").input_ids
    expected = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, prompt.shape[1]:]
    assert tokens[0] == tokens[1] == expected.tolist()


def test_memory_driven_decision_points_fall_where_the_sessions_own_reservation_is_full(engine):
    # The reservation is what every row needs up to the first decision point (16 tokens); the
    # survivors of a prune grow into the room the rejected rows leave, doubling their reach.
    session = engine.open_session(MESSAGES, n=8, max_new_tokens=200, min_tokens_before_full=16,
                                  sampling=SamplingParams(seed=1))
    try:
        started = session.start().result(WAIT)
        assert started.capacity_tokens == 16
        assert started.kv_cache_budget_bytes == (started.prompt_tokens + 8 * 16) * engine.bytes_per_token
        result = session.advance(0).result(WAIT)
        assert result.memory_full and result.position == 16
        assert session.prune([0, 1, 2, 3]).result(WAIT).capacity_tokens == 32
        result = session.advance(0).result(WAIT)
        assert result.memory_full and result.position == 32 and result.steps == 16
    finally:
        close_and_wait(engine, session)


def test_n_zero_takes_as_many_candidates_as_the_budget_allows(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=512 * 1000, max_batch_size=500)
    try:
        request = engine.prepare(MESSAGES, n=0, max_new_tokens=100, min_tokens_before_full=20,
                                 sampling=SamplingParams())
        assert request.n == (1000 - len(request.prompt_ids)) // 20
        with pytest.raises(FieldError) as error:
            engine.prepare(MESSAGES, n=request.n + 1, max_new_tokens=100, min_tokens_before_full=20,
                           sampling=SamplingParams())
        assert error.value.field == "n"
    finally:
        engine.shutdown()


def test_limits_name_the_field(engine):
    with pytest.raises(FieldError) as error:
        engine.open_session(MESSAGES, n=2, max_new_tokens=5000, min_tokens_before_full=0, sampling=SamplingParams())
    assert error.value.field == "max_new_tokens" and "context" in str(error.value)
    session = engine.open_session(MESSAGES, n=2, max_new_tokens=5, min_tokens_before_full=0, sampling=SamplingParams())
    try:
        session.start().result(WAIT)
        with pytest.raises(FieldError) as error:
            session.prune([7]).result(WAIT)
        assert error.value.field == "keep"
    finally:
        close_and_wait(engine, session)


def test_finished_rows_are_compacted_away_and_sequences_end_at_eos(engine):
    # Make the end-of-turn token likely so sequences finish at different lengths.
    eos = engine.tokenizer.eos_token_id
    bias = torch.zeros(engine.decoder.vocab_size)
    bias[eos] = 7.5
    head = engine.decoder.lm_head
    head.bias = torch.nn.Parameter(bias)
    session = engine.open_session(MESSAGES, n=64, max_new_tokens=60, min_tokens_before_full=0,
                                  sampling=SamplingParams(seed=2))
    try:
        session.start().result(WAIT)
        result = session.advance(0).result(WAIT)
    finally:
        head.bias = None
        close_and_wait(engine, session)
    tokens = [s.tokens for s in session.sequences]
    assert any(t[-1] == eos for t in tokens) and all(eos not in t[:-1] for t in tokens)
    assert all(s.finish_reason == ("stop" if s.tokens[-1] == eos else "length") for s in session.sequences)
    # The batch shrank as rows finished, instead of decoding dead rows to the end.
    assert result.step_rows[-1] < result.step_rows[0] == 64
    assert result.decoded_tokens == sum(len(t) for t in tokens) - 64  # first tokens come from the prefill
    assert session.kv_cache_bytes == 0  # closed: memory released
