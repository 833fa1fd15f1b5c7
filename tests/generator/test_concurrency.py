"""Many sessions at once on one engine (tiny random model): the same tokens as alone, a shared
KV-cache pool with a bounded queue, chunked prefill beside decoding, cancellation that frees."""
import asyncio
import time

import grpc
import pytest

from common import metrics
from common.errors import FieldError, Overloaded, RETRY_PUSHBACK_KEY, status_of
from generator_service.decoder import DEFAULT_ROW_BLOCK
from generator_service.engine import GeneratorEngine
from generator_service.native_backend import NativeBackend
from generator_service.request_plan import InputLimits
from generator_service.sampling import SamplingParams
from generator_service.servicer import GeneratorServicer
from generator_service.session import SessionCancelled
from specrej.v1 import common_pb2
from specrej.v1 import generator_pb2 as pb
from tests.generator.scripted import LONG, POEM, SCRIPTS, WAIT, close_and_wait, play, play_together, wait_until


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=64 * 1024**2, max_batch_size=64,
                             prefill_chunk_tokens=32)
    yield engine
    engine.shutdown()


def small_engine(tiny_model_dir, budget_tokens: int, **options) -> GeneratorEngine:
    per_token = 512  # 2 layers x (k, v) x 2 kv heads x 16 dims x 4 bytes
    return GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=per_token * budget_tokens, **options)


def recording_steps(engine):
    """The number of sessions in each decode step, recorded while the real step runs."""
    sessions_per_step = []
    step = engine.decoder.decode_step

    def recorded(tokens, positions, segments):
        sessions_per_step.append(len(segments))
        return step(tokens, positions, segments)

    return sessions_per_step, recorded


@pytest.mark.parametrize("row_block", [DEFAULT_ROW_BLOCK, 7])
def test_sessions_decoded_together_give_exactly_the_tokens_they_give_alone(engine, row_block):
    engine.decoder.row_block = row_block
    sessions_per_step, recorded = recording_steps(engine)
    try:
        alone = {name: play(engine, name) for name in SCRIPTS}
        engine.decoder.decode_step = recorded
        together = play_together(engine, list(SCRIPTS))
    finally:
        engine.decoder.row_block = DEFAULT_ROW_BLOCK
        del engine.decoder.decode_step
    assert max(sessions_per_step) == 3  # they really shared decode steps
    assert together == alone
    assert engine.kv_cache_bytes() == 0


def test_a_full_queue_is_refused_at_once_with_a_retry_hint(tiny_model_dir):
    engine = small_engine(tiny_model_dir, 10_000, max_sessions=1, max_queued=1)
    rejected = metrics.ADMISSION_REJECTED.labels("generator")
    try:
        first = engine.open_session(POEM, n=2, max_new_tokens=50, sampling=SamplingParams(), min_tokens_before_full=0)
        second = engine.open_session(POEM, n=2, max_new_tokens=5, sampling=SamplingParams(), min_tokens_before_full=0)
        assert metrics.ADMISSION_QUEUED.labels("generator")._value.get() == 1
        before = rejected._value.get()
        began = time.monotonic()
        with pytest.raises(Overloaded) as error:
            engine.open_session(POEM, n=2, max_new_tokens=5, sampling=SamplingParams(), min_tokens_before_full=0)
        assert time.monotonic() - began < 1
        assert rejected._value.get() == before + 1
        status = status_of(error.value)
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (RETRY_PUSHBACK_KEY, str(int(error.value.retry_after_seconds * 1000))) in status.trailing_metadata
        assert error.value.retry_after_seconds > 0
        first.start().result(WAIT)
        assert not second.start().done()  # one session decodes at a time here
        first.close()
        assert second.start().result(WAIT).n == 2  # the waiting one goes as soon as the first leaves
        close_and_wait(engine, second)
    finally:
        engine.shutdown()


def test_what_a_prune_frees_admits_a_waiting_session_and_all_memory_returns(tiny_model_dir):
    engine = small_engine(tiny_model_dir, 600)
    try:
        big = engine.open_session(POEM, n=8, max_new_tokens=40, sampling=SamplingParams(), min_tokens_before_full=0)
        started = big.start().result(WAIT)
        assert started.kv_cache_budget_bytes == (started.prompt_tokens + 8 * 40) * 512
        # 37 + 320 tokens are reserved; this one needs 37 + 240 of the 243 left: it waits.
        small = engine.open_session(POEM, n=6, max_new_tokens=40, sampling=SamplingParams(), min_tokens_before_full=0)
        big.advance(10).result(WAIT)
        assert not small.start().done()
        pruned = big.prune([0, 1]).result(WAIT)
        # The survivors can never use more than max_new_tokens each: the rest goes back to the pool.
        assert pruned.kv_cache_bytes == (started.prompt_tokens + 2 * 40) * 512
        assert small.start().result(WAIT).n == 6
        assert engine.admission.free_tokens == 600 - (started.prompt_tokens + 2 * 40) - (started.prompt_tokens + 6 * 40)
        big.advance(0).result(WAIT)
        small.advance(0).result(WAIT)
        close_and_wait(engine, big, small)
        assert engine.kv_cache_bytes() == 0 and engine.admission.free_tokens == 600
    finally:
        engine.shutdown()


def test_a_request_larger_than_the_whole_budget_is_refused_not_queued(tiny_model_dir):
    engine = small_engine(tiny_model_dir, 600)
    try:
        with pytest.raises(FieldError) as error:
            engine.open_session(POEM, n=20, max_new_tokens=40, sampling=SamplingParams(), min_tokens_before_full=0)
        assert error.value.field == "n"
    finally:
        engine.shutdown()


def test_a_long_prompt_is_prefilled_in_chunks_between_another_sessions_steps(engine):
    events = []
    prefill_chunk, step = engine.decoder.prefill_chunk, engine.decoder.decode_step

    def recorded_chunk(chunk_ids, prefix, start):
        events.append("chunk")
        return prefill_chunk(chunk_ids, prefix, start)

    def recorded_step(tokens, positions, segments):
        events.append("step")
        return step(tokens, positions, segments)

    running = engine.open_session(POEM, n=4, max_new_tokens=150, sampling=SamplingParams(seed=1),
                                  min_tokens_before_full=0)
    alone = play(engine, "long")
    try:
        running.start().result(WAIT)
        engine.decoder.prefill_chunk, engine.decoder.decode_step = recorded_chunk, recorded_step
        decoding = running.advance(0)
        wait_until(lambda: "step" in events)
        together = play(engine, "long")
        assert not decoding.done()  # the long one came and went while the first kept decoding
        decoding.result(WAIT)
    finally:
        del engine.decoder.prefill_chunk, engine.decoder.decode_step
        close_and_wait(engine, running)
    chunks = [i for i, event in enumerate(events) if event == "chunk"]
    assert len(chunks) == -(-len(engine.prepare(LONG, n=1, max_new_tokens=1, sampling=SamplingParams(),
                                                min_tokens_before_full=0).prompt_ids) // 32) > 4
    assert all("step" in events[a:b] for a, b in zip(chunks, chunks[1:]))  # no chunk right after another
    assert together == alone


def test_a_chunked_prefill_decodes_what_hugging_face_generate_does(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", prefill_chunk_tokens=16)
    try:
        session = engine.open_session(LONG, n=1, max_new_tokens=10, sampling=SamplingParams(temperature=0),
                                      min_tokens_before_full=0)
        session.start().result(WAIT)
        session.advance(0).result(WAIT)
        close_and_wait(engine, session)
    finally:
        engine.shutdown()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = engine.tokenizer.apply_chat_template(LONG, add_generation_prompt=True, return_tensors="pt").input_ids
    expected = model.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None)[0, prompt.shape[1]:]
    assert session.sequences[0].tokens == expected.tolist()


def test_sessions_closed_mid_advance_fail_their_answer_and_free_their_memory(engine):
    sessions = [engine.open_session(POEM, n=8, max_new_tokens=300, sampling=SamplingParams(seed=i),
                                    min_tokens_before_full=0) for i in range(3)]
    for session in sessions:
        session.start().result(WAIT)
    advances = [session.advance(0) for session in sessions]
    wait_until(lambda: sessions[0].position > 5)
    sessions[0].close()
    sessions[1].close()
    for advance in advances[:2]:
        with pytest.raises(SessionCancelled):
            advance.result(WAIT)
    wait_until(lambda: engine.kv_cache_bytes() == sessions[2].kv_cache_bytes > 0)
    assert advances[2].result(WAIT).position == 300
    close_and_wait(engine, sessions[2])
    assert engine.kv_cache_bytes() == 0


def test_a_client_that_cancels_closes_its_session_through_the_servicer(engine):
    servicer = GeneratorServicer(NativeBackend(engine))

    def start_message(seed):
        return pb.SessionCommand(start=pb.StartSession(
            messages=[common_pb2.Message(role="user", content="Tell me about rivers.")], n=8, max_new_tokens=300,
            sampling=pb.SamplingParams(temperature=1, seed=seed)))

    async def stream(seed, events):
        async def commands():
            yield start_message(seed)
            yield pb.SessionCommand(advance=pb.Advance(until_tokens=0))
            await asyncio.Event().wait()  # the client keeps the stream open

        async for event in servicer.Session(commands(), None):
            events.append(event)

    async def scenario():
        events = [[], [], []]
        tasks = [asyncio.create_task(stream(seed, events[seed])) for seed in range(3)]
        await asyncio.to_thread(wait_until, lambda: all(events) and engine.kv_cache_bytes() > 0)
        for task in tasks[:2]:
            task.cancel()  # what grpc.aio does when the client cancels or its deadline passes
        await asyncio.to_thread(wait_until, lambda: len(engine.sessions) == 1)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(wait_until, lambda: not engine.sessions)

    asyncio.run(scenario())
    assert engine.kv_cache_bytes() == 0 and engine.admission.free_tokens == engine.admission.budget_tokens


def test_input_limits_are_refused_before_any_model_work_naming_the_field(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu",
                             limits=InputLimits(max_messages=3, max_prompt_bytes=100, max_prompt_tokens=40))

    def refused(messages) -> str:
        with pytest.raises(FieldError) as error:
            engine.prepare(messages, n=1, max_new_tokens=5, sampling=SamplingParams(), min_tokens_before_full=0)
        return str(error.value)

    try:
        assert refused([{"role": "user", "content": "hi"}] * 4).startswith("messages: 4 messages; at most 3")
        assert refused([{"role": "user", "content": "hi"}, {"role": "user", "content": "é" * 60}]) \
            .startswith("messages[1].content: 120 bytes; at most 100")
        assert refused([{"role": "user", "content": "a" * 60}] * 2).startswith("messages: 120 bytes of content")
        assert refused([{"role": "user", "content": "word " * 19}]).startswith("messages: the prompt has ")
        assert not engine.sessions
    finally:
        engine.shutdown()


def test_a_vanishing_temperature_decodes_the_greedy_text(engine):
    def texts(temperature):
        session = engine.open_session(POEM, n=2, max_new_tokens=12, min_tokens_before_full=0,
                                      sampling=SamplingParams(temperature=temperature, seed=4))
        try:
            session.start().result(WAIT)
            return [u.text_delta for u in session.advance(0).result(WAIT).updates]
        finally:
            close_and_wait(engine, session)

    greedy = texts(0.0)
    assert texts(1e-38) == greedy and texts(1e-5) == greedy
    assert texts(1.0) != greedy
