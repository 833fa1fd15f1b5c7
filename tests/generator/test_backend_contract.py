"""The generator backend contract (generator_service/backend.py), the same tests against both
backends: vLLM's engine and the native one, on one tiny random Llama with the real tokenizer."""
import asyncio

import pytest

from common.errors import FieldError, Overloaded
from generator_service.sampling import SamplingParams
from tests.conftest import BACKEND_SETTINGS, WAIT

MESSAGES = [{"role": "user", "content": "Write a few words about the sea."}]


@pytest.fixture(scope="module")
def native_backend(vllm_model_dir):
    from generator_service.engine import GeneratorEngine
    from generator_service.native_backend import NativeBackend

    made = NativeBackend(GeneratorEngine(str(vllm_model_dir), **BACKEND_SETTINGS))
    yield made
    made.shutdown()


@pytest.fixture(params=["native", "vllm"])
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


def sampling(seed=1, temperature=1.0):
    return SamplingParams(temperature=temperature, seed=seed)


async def decode_all(backend, *, n=4, max_new_tokens=24, seed=1, every=8, temperature=1.0, token_ids=None):
    """Texts, token counts and ends of a session advanced `every` tokens to the end; each candidate's
    reported token ids are appended to `token_ids[index]` when given."""
    session = backend.admit(backend.prepare(MESSAGES, n=n, max_new_tokens=max_new_tokens,
                                            sampling=sampling(seed, temperature),
                                            min_tokens_before_full=max_new_tokens))
    texts, counts, ends = [""] * n, [0] * n, [""] * n
    try:
        await session.start()
        for until in range(every, max_new_tokens + every, every):
            result = await session.advance(min(until, max_new_tokens))
            for update in result.updates:
                texts[update.index] += update.text_delta
                counts[update.index], ends[update.index] = update.num_tokens, update.finish_reason
                if token_ids is not None:
                    token_ids[update.index] += update.token_ids
            if all(ends):
                break
    finally:
        session.close()
    return texts, counts, ends


def test_an_advance_reports_each_running_candidate_at_exactly_the_asked_length(backend, run):
    async def scenario():
        session = backend.admit(backend.prepare(MESSAGES, n=4, max_new_tokens=32, sampling=sampling(),
                                                min_tokens_before_full=32))
        try:
            started = await session.start()
            result = await session.advance(10)
            return started, result
        finally:
            session.close()

    started, result = run(scenario())
    assert started.n == 4 and started.prompt_tokens > 10 and started.capacity_tokens == 32
    assert sorted(u.index for u in result.updates) == [0, 1, 2, 3]
    for update in result.updates:
        # A candidate that ended early (end of sequence) says so; every other one is at 10 tokens.
        assert update.num_tokens == 10 or (update.finish_reason == "stop" and update.num_tokens < 10)
    assert result.position == 10


def test_every_candidate_ends_with_stop_or_length_within_max_new_tokens(backend, run):
    texts, counts, ends = run(decode_all(backend, n=6, max_new_tokens=24))
    assert all(end in ("stop", "length") for end in ends)
    assert all(count == 24 for count, end in zip(counts, ends) if end == "length")
    assert all(1 <= count <= 24 for count in counts)
    assert all(text for text, count in zip(texts, counts) if count > 1)


def test_the_reported_token_ids_are_each_candidates_tokens_and_spell_its_text(backend, run, tokenizer_dir):
    from transformers import AutoTokenizer

    token_ids = [[] for _ in range(6)]
    # Advances of 5 tokens cut words and multi-byte characters at many places.
    texts, counts, ends = run(decode_all(backend, n=6, max_new_tokens=40, every=5, token_ids=token_ids))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for ids, text, count, end in zip(token_ids, texts, counts, ends):
        assert len(ids) == count - (end == "stop")  # the end of sequence is counted, not listed
        assert tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text


def test_the_same_seed_gives_the_same_candidates_and_another_seed_others(backend, run):
    first = run(decode_all(backend, seed=11))
    again = run(decode_all(backend, seed=11))
    other = run(decode_all(backend, seed=12))
    assert first == again
    assert first[0] != other[0]
    assert len(set(first[0])) == 4  # each candidate has its own random stream


def test_greedy_candidates_are_all_the_same_text(backend, run):
    texts, _, _ = run(decode_all(backend, n=3, temperature=0.0))
    assert len(set(texts)) == 1


def test_a_prune_drops_the_rejected_and_the_survivors_continue(backend, run):
    async def scenario():
        session = backend.admit(backend.prepare(MESSAGES, n=4, max_new_tokens=32, sampling=sampling(seed=5),
                                                min_tokens_before_full=8))
        try:
            await session.start()
            first = await session.advance(8)
            running = [u.index for u in first.updates if not u.finish_reason]
            keep = running[:1]
            pruned = await session.prune(keep)
            second = await session.advance(16)
            with pytest.raises(FieldError) as unknown:
                await session.prune([running[-1]] if len(running) > 1 else [99])
            return keep, first, pruned, second, unknown.value
        finally:
            session.close()

    keep, first, pruned, second, unknown = run(scenario())
    assert pruned.running == 1
    assert [u.index for u in second.updates] == keep
    assert second.updates[0].num_tokens in (16,) or second.updates[0].finish_reason
    assert unknown.field == "keep"
    # The survivors grow into the room the rejected gave back.
    assert pruned.capacity_tokens >= first.capacity_tokens


@pytest.mark.parametrize("until", [0, 40])
def test_an_advance_stops_where_the_session_reservation_is_full(backend, run, until):
    async def scenario():
        session = backend.admit(backend.prepare(MESSAGES, n=4, max_new_tokens=64, sampling=sampling(seed=3),
                                                min_tokens_before_full=12))
        try:
            started = await session.start()
            return started, await session.advance(until)
        finally:
            session.close()

    started, result = run(scenario())
    assert started.capacity_tokens == 12
    running = [u for u in result.updates if not u.finish_reason]
    assert result.memory_full == bool(running)
    assert all(u.num_tokens == 12 for u in running)


def test_closing_frees_the_session_and_admission_queues_then_refuses(backend, run):
    async def scenario():
        def open_one():
            return backend.admit(backend.prepare(MESSAGES, n=2, max_new_tokens=8, sampling=sampling(),
                                                 min_tokens_before_full=8))
        first, second = open_one(), open_one()
        await first.start()
        await second.start()
        queued = open_one()  # the third waits: two sessions decode at most
        with pytest.raises(Overloaded):
            open_one()
        waiting = asyncio.ensure_future(queued.start())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        first.close()
        await asyncio.wait_for(waiting, WAIT)
        active_while_open = backend.active_sessions()
        for session in (second, queued):
            session.close()
        await asyncio.sleep(0.2)
        return active_while_open, backend.active_sessions(), backend.kv_cache_bytes(), backend.running_sequences()

    active_while_open, active, kv_bytes, running = run(scenario())
    assert active_while_open == 2
    assert (active, kv_bytes, running) == (0, 0, 0)


def test_requests_that_cannot_fit_are_refused_naming_the_field(backend):
    with pytest.raises(FieldError) as too_many:
        backend.prepare(MESSAGES, n=17, max_new_tokens=8, sampling=sampling(), min_tokens_before_full=8)
    assert too_many.value.field == "n"
    with pytest.raises(FieldError) as too_long:
        backend.prepare(MESSAGES, n=1, max_new_tokens=5000, sampling=sampling(), min_tokens_before_full=8)
    assert too_long.value.field == "max_new_tokens"
    most = backend.prepare(MESSAGES, n=0, max_new_tokens=8, sampling=sampling(), min_tokens_before_full=8)
    assert most.n == 16  # n = 0: as many as the batch limit and memory allow


async def branch_session(backend, *, seed=7, temperature=1.0, fork=True, reserve=24):
    """Four candidates advanced to 8 tokens; then two kept and, with `fork`, two branches of the best
    kept one made, all advanced to 16. Returns what start and both advances said, the kept, and the
    token ids of every candidate reported at 16, as the reports spell them (a branch's first report
    lists only its tokens after the fork)."""
    session = backend.admit(backend.prepare(MESSAGES, n=4, max_new_tokens=24, sampling=sampling(seed, temperature),
                                            min_tokens_before_full=reserve))
    try:
        started = await session.start()
        first = await session.advance(8)
        keep = [u.index for u in first.updates if not u.finish_reason][:2]
        fork_from = [keep[0], keep[0]] if fork else []
        second = await session.advance(16, keep, fork_from)
        tokens = {u.index: list(u.token_ids) for u in first.updates}
        tokens.update({started.n + number: list(tokens[parent]) for number, parent in enumerate(fork_from)})
        for update in second.updates:
            tokens[update.index] += update.token_ids
        return started, first, keep, second, {u.index: tokens[u.index] for u in second.updates}
    finally:
        session.close()


def texts_by_index(*results):
    texts = {}
    for result in results:
        for update in result.updates:
            texts[update.index] = texts.get(update.index, "") + update.text_delta
    return texts


def test_a_branch_continues_exactly_its_parents_prefix_with_its_own_stream(backend, run, tokenizer_dir):
    from transformers import AutoTokenizer

    _, first, keep, second, tokens = run(branch_session(backend))
    parent = keep[0]
    updates = {u.index: u for u in second.updates}
    assert sorted(updates) == sorted([*keep, 4, 5])  # the new candidates take the next indices
    decode = AutoTokenizer.from_pretrained(tokenizer_dir).decode
    at_fork = texts_by_index(first)[parent]
    for branch in (4, 5):
        assert updates[branch].num_tokens == 16  # the 8 inherited tokens count
        assert tokens[branch][:8] == tokens[parent][:8]
        # Only the text written after the fork is reported: the parent's text then, plus it, is the whole.
        assert at_fork + updates[branch].text_delta == decode(tokens[branch], skip_special_tokens=True)
    assert len({tuple(tokens[i][8:]) for i in (parent, 4, 5)}) == 3  # each its own random stream


def test_the_same_seed_gives_the_same_branches(backend, run):
    first = run(branch_session(backend, seed=21))
    again = run(branch_session(backend, seed=21))
    assert first[4] == again[4]
    assert texts_by_index(first[1], first[3]) == texts_by_index(again[1], again[3])


def test_branches_hold_their_rows_of_kv_cache_within_the_session_reservation(backend, run):
    started, _, _, alone, _ = run(branch_session(backend, fork=False))
    _, _, _, branched, _ = run(branch_session(backend))
    assert branched.kv_cache_bytes > alone.kv_cache_bytes
    assert branched.kv_cache_bytes <= started.kv_cache_budget_bytes
    if type(backend).__name__ == "NativeBackend":
        # Two more rows, each with room for the whole response.
        row_bytes = branched.capacity_tokens * backend.info.kv_cache_bytes_per_token
        assert branched.kv_cache_bytes - alone.kv_cache_bytes == 2 * row_bytes


@pytest.mark.parametrize("case", ["not running", "beyond n", "beyond the reservation"])
def test_branches_that_cannot_be_made_are_refused_naming_fork_from(backend, run, case):
    async def scenario():
        reserve = 8 if case == "beyond the reservation" else 24
        session = backend.admit(backend.prepare(MESSAGES, n=4, max_new_tokens=24, sampling=sampling(seed=3),
                                                min_tokens_before_full=reserve))
        try:
            await session.start()
            first = await session.advance(8)
            running = [u.index for u in first.updates if not u.finish_reason]
            keep, fork_from = running[:2], {"not running": [running[-1]], "beyond n": [running[0]] * 3,
                                            "beyond the reservation": [running[0]] * 2}[case]
            with pytest.raises(FieldError) as refused:
                await session.advance(16, keep, fork_from)
            return refused.value
        finally:
            session.close()

    assert run(scenario()).field == "fork_from"


def test_a_prompt_longer_than_a_default_prefill_step_is_served(backend, run):
    """Over 2,048 prompt tokens: vLLM would split the prefill over steps by default, which its CPU
    build cannot do for seeded requests without failing the whole engine."""
    long_messages = [{"role": "user", "content": " ".join(f"word{i}" for i in range(700))}]

    async def scenario():
        session = backend.admit(backend.prepare(long_messages, n=2, max_new_tokens=4, sampling=sampling(seed=9),
                                                min_tokens_before_full=4))
        try:
            started = await session.start()
            return started, await session.advance(4)
        finally:
            session.close()

    started, result = run(scenario())
    assert started.prompt_tokens > 2048
    assert [u.num_tokens for u in result.updates] == [4, 4]


def test_a_backend_whose_engine_stopped_is_unhealthy_and_the_service_notices(vllm_model_dir, run):
    from generator_service.__main__ import wait_until_unhealthy
    from generator_service.engine import GeneratorEngine
    from generator_service.native_backend import NativeBackend

    backend = NativeBackend(GeneratorEngine(str(vllm_model_dir), **BACKEND_SETTINGS))
    assert backend.healthy()
    backend.shutdown()  # its decoding thread ends, as when it fails
    run(asyncio.wait_for(wait_until_unhealthy(backend, interval=0.05), 10))
    assert not backend.healthy()
