"""The generator backend contract (generator_service/backend.py), the same tests against both
backends: vLLM's engine and the native one, on one tiny random Llama with the real tokenizer."""
import asyncio
import pathlib
import threading

import pytest

from common.errors import FieldError, Overloaded
from generator_service.request_plan import InputLimits
from generator_service.sampling import SamplingParams

MESSAGES = [{"role": "user", "content": "Write a few words about the sea."}]
WAIT = 120


@pytest.fixture(scope="module")
def contract_model_dir(tmp_path_factory, tokenizer_dir) -> pathlib.Path:
    """Attention heads of 64 dimensions: the smallest vLLM's CPU kernels take."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("contract-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def event_loop_thread():
    """One event loop for the module: vLLM's engine answers on the loop that first asked it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


# Two sessions decode at once, one more may wait; a request holds at most 16 candidates.
LIMITS = dict(max_batch_size=16, max_sessions=2, max_queued=1, limits=InputLimits())


@pytest.fixture(scope="module", params=["native", "vllm"])
def backend(request, contract_model_dir):
    if request.param == "native":
        from generator_service.engine import GeneratorEngine
        from generator_service.native_backend import NativeBackend

        made = NativeBackend(GeneratorEngine(str(contract_model_dir), kv_cache_budget=4 * 1024**2, **LIMITS))
    else:
        pytest.importorskip("vllm")
        from generator_service.vllm_backend import VllmBackend

        made = VllmBackend(str(contract_model_dir), kv_cache_budget=4 * 1024**2, compile="off", **LIMITS)
    yield made
    made.shutdown()


@pytest.fixture
def run(event_loop_thread):
    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, event_loop_thread).result(WAIT)
    return run


def sampling(seed=1, temperature=1.0):
    return SamplingParams(temperature=temperature, seed=seed)


async def decode_all(backend, *, n=4, max_new_tokens=24, seed=1, every=8, temperature=1.0):
    """Texts, token counts and ends of a session advanced `every` tokens to the end."""
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
