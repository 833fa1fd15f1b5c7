"""The reward servicer on a real grpc.aio server on loopback: translation, scoring streams and statuses."""
import asyncio
import queue
import threading
import time

import grpc
import pytest

from common.errors import field_violations
from common.server import Server, ServerOptions
from common.tokenizer_fingerprint import tokenizer_fingerprint
from coordinator.clients import RewardClient
from reward_service.engine import ScoringEngine
from reward_service.limits import InputLimits
from reward_service.scorers import Item, common_prefix_length
from reward_service.servicer import RewardServicer
from reward_service.sessions import SessionCache
from specrej.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from tests.reward.conftest import reference_mean_logprob, reference_scores

MESSAGES = [common_pb2.Message(role="user", content="Name a fruit.")]
AS_DICTS = [{"role": "user", "content": "Name a fruit."}]


class LoopbackReward:
    """A Server with the reward servicer, its event loop on a thread of its own."""

    def __init__(self, servicer: RewardServicer):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._run(self._start(servicer))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = reward_pb2_grpc.RewardStub(self.channel)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    async def _start(self, servicer) -> Server:
        name = reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name
        server = Server("reward", [name], ServerOptions(host="127.0.0.1", port=0, metrics_port=0))
        reward_pb2_grpc.add_RewardServicer_to_server(servicer, server.grpc)
        await server.start()
        await server.mark_serving()
        return server

    def stop(self) -> None:
        self.channel.close()
        self._run(self.server.grpc.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def new_engine(logprob) -> ScoringEngine:
    return ScoringEngine(logprob, sessions=SessionCache(1 << 30), batch_window_seconds=0.002,
                         limits=InputLimits(max_context=1024, max_items=8, max_response_tokens=32))


@pytest.fixture(scope="module")
def engine(logprob):
    engine = new_engine(logprob)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reward(engine):
    loopback = LoopbackReward(RewardServicer(engine, model_name="tiny"))
    yield loopback.stub
    loopback.stop()


def start(messages=MESSAGES) -> reward_pb2.ScoreSessionRequest:
    return reward_pb2.ScoreSessionRequest(start=reward_pb2.ScoreSessionStart(messages=messages))


def round_of(*deltas: tuple[int, str, bool]) -> reward_pb2.ScoreSessionRequest:
    items = [reward_pb2.ScoreDelta(candidate=c, text_delta=text, complete=done) for c, text, done in deltas]
    return reward_pb2.ScoreSessionRequest(round=reward_pb2.ScoreRound(items=items))


def whole(texts: list[str], complete: list[bool]) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(messages=MESSAGES, items=[reward_pb2.ScoreItem(response=t, complete=c)
                                                             for t, c in zip(texts, complete)])


def wait_until_freed(engine, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (engine.sessions.nbytes or len(engine.sessions)) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_stream_of_deltas_scores_like_whole_texts_and_reads_only_the_new_tokens(reward, logprob, engine):
    rounds = [round_of((0, "Apples", False), (3, "Pears", False)),
              round_of((0, " are red", False), (3, " are sweet.", True)),
              round_of((3, "", True))]
    texts = [(["Apples", "Pears"], [False, False]),
             (["Apples are red", "Pears are sweet."], [False, True]),
             (["Pears are sweet."], [True])]
    answers = list(reward.ScoreSession(iter([start(), *rounds]), timeout=30))
    assert len(answers) == 3
    tokenize = logprob.tokenizer
    read = {}
    for answer, (responses, complete) in zip(answers, texts):
        alone = reward.Score(whole(responses, complete), timeout=30)
        assert list(answer.scores) == pytest.approx(list(alone.scores), abs=1e-4)
        assert list(answer.scores) == pytest.approx(reference_scores(logprob, AS_DICTS, responses, complete), abs=1e-4)
        bodies = [tokenize(r, add_special_tokens=False).input_ids + ([tokenize.eos_token_id] if c else [])
                  for r, c in zip(responses, complete)]
        candidates = [0, 3] if len(bodies) == 2 else [3]
        fresh = sum(len(b) - common_prefix_length(read.get(c, []), b) for c, b in zip(candidates, bodies))
        read = dict(zip(candidates, bodies))
        prompt = len(logprob.tokenize(AS_DICTS, [])[0]) if answer is answers[0] else 0
        assert answer.scored_tokens == prompt + fresh
    assert answers[1].scored_tokens < reward.Score(whole(*texts[1]), timeout=30).scored_tokens
    assert answers[2].scored_tokens == 0  # nothing new: the scores come from what the stream kept
    wait_until_freed(engine)
    assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0


@pytest.mark.parametrize("end", ["half-close", "cancel"])
def test_the_end_of_a_stream_frees_what_it_held(reward, engine, end):
    outgoing = queue.Queue()
    outgoing.put(start())
    outgoing.put(round_of((0, "Apples are red", False), (1, "Pears are green", False)))
    answers = reward.ScoreSession(iter(outgoing.get, None), timeout=30)
    next(answers)
    assert engine.sessions.nbytes > 0 and len(engine.sessions) == 1
    if end == "cancel":
        answers.cancel()
    else:
        outgoing.put(None)
        assert list(answers) == []
    wait_until_freed(engine)
    assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0


def test_info_names_the_scorer(reward, logprob):
    info = reward.Info(reward_pb2.RewardInfoRequest(), timeout=30)
    assert (info.model, info.scorer, info.device, info.dtype) == ("tiny", "lm-logprob", "cpu", "float32")
    assert info.tokenizer == tokenizer_fingerprint(logprob.tokenizer)


def pieced_ids(tokenizer, pieces: list[str]) -> list[int]:
    """Token ids of each piece tokenized alone, joined: a tokenization the tokenizer would not choose
    for the whole text, as a sampling generator may write it."""
    return [t for piece in pieces for t in tokenizer(piece, add_special_tokens=False).input_ids]


def id_round(*deltas: tuple[int, list[int], bool]) -> reward_pb2.ScoreSessionRequest:
    items = [reward_pb2.ScoreDelta(candidate=c, token_ids=ids, complete=done) for c, ids, done in deltas]
    return reward_pb2.ScoreSessionRequest(round=reward_pb2.ScoreRound(items=items))


def test_token_ids_are_scored_as_the_tokens_they_are_not_as_their_text_would_tokenize(reward, logprob, engine):
    tokenizer = logprob.tokenizer
    apples, pears = pieced_ids(tokenizer, ["Ap", "ples", " are", " r", "ed"]), pieced_ids(tokenizer, ["Pe", "ars"])
    assert apples != tokenizer("Apples are red", add_special_tokens=False).input_ids
    fingerprint = tokenizer_fingerprint(tokenizer)
    opening = reward_pb2.ScoreSessionRequest(start=reward_pb2.ScoreSessionStart(messages=MESSAGES,
                                                                                tokenizer=fingerprint))
    rounds = [id_round((0, apples[:2], False), (1, pears, False)), id_round((0, apples[2:], True), (1, [], True))]
    answers = list(reward.ScoreSession(iter([opening, *rounds]), timeout=30))
    expected = [[reference_mean_logprob(logprob, AS_DICTS, apples[:2], False),
                 reference_mean_logprob(logprob, AS_DICTS, pears, False)],
                [reference_mean_logprob(logprob, AS_DICTS, apples, True),
                 reference_mean_logprob(logprob, AS_DICTS, pears, True)]]
    for answer, scores in zip(answers, expected):
        assert list(answer.scores) == pytest.approx(scores, abs=1e-4)
    # The text of those tokens, tokenized again, is another sequence with another score.
    as_text = reference_mean_logprob(logprob, AS_DICTS, "Apples are red", True)
    assert abs(answers[1].scores[0] - as_text) > 1e-3
    # The second round read the new tokens and the ends of sequence, nothing again.
    assert answers[1].scored_tokens == len(apples) - 2 + 2
    unary = reward.Score(reward_pb2.ScoreRequest(messages=MESSAGES, tokenizer=fingerprint, items=[
        reward_pb2.ScoreItem(token_ids=apples, complete=True)]), timeout=30)
    assert unary.scores[0] == pytest.approx(expected[1][0], abs=1e-4)
    wait_until_freed(engine)
    assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_token_ids_in_another_tokenizer_are_a_failed_precondition_and_ids_outside_the_vocabulary_invalid(
        reward, logprob, engine, stream):
    fingerprint = tokenizer_fingerprint(logprob.tokenizer)
    cases = [("another-tokenizer", [1, 2], grpc.StatusCode.FAILED_PRECONDITION, "tokenizer"),
             (fingerprint, [1, len(logprob.tokenizer)], grpc.StatusCode.INVALID_ARGUMENT, "items[0].token_ids")]
    for tokenizer, ids, code, field in cases:
        with pytest.raises(grpc.RpcError) as error:
            if stream:
                list(reward.ScoreSession(iter([
                    reward_pb2.ScoreSessionRequest(start=reward_pb2.ScoreSessionStart(messages=MESSAGES,
                                                                                      tokenizer=tokenizer)),
                    id_round((0, ids, False))]), timeout=30))
            else:
                reward.Score(reward_pb2.ScoreRequest(messages=MESSAGES, tokenizer=tokenizer,
                                                     items=[reward_pb2.ScoreItem(token_ids=ids)]), timeout=30)
        named = ("start." if code == grpc.StatusCode.FAILED_PRECONDITION else "round.") + field if stream else field
        assert error.value.code() == code
        assert error.value.details().startswith(f"{named}: ")
    wait_until_freed(engine)
    assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0


@pytest.mark.parametrize("request_, field", [
    (reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(response="Apples")]), "messages"),
    (reward_pb2.ScoreRequest(messages=MESSAGES, items=[reward_pb2.ScoreItem(response="x")] * 9), "items"),
    (reward_pb2.ScoreRequest(messages=MESSAGES, items=[reward_pb2.ScoreItem(response="Apples"),
                                                       reward_pb2.ScoreItem(response="apple " * 40)]),
     "items[1].response"),
])
def test_bad_input_is_invalid_argument_naming_the_field(reward, request_, field):
    with pytest.raises(grpc.RpcError) as error:
        reward.Score(request_, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    assert field_violations(error.value)[0][0] == field


@pytest.mark.parametrize("messages, field", [
    ([round_of((0, "Apples", False))], "start"),
    ([start([])], "start.messages"),
    ([start(), start()], "round"),
    ([start(), round_of(*[(c, "x", False) for c in range(9)])], "round.items"),
    ([start(), round_of((0, "Apples", False), (1, "apple " * 40, False))], "round.items[1].text_delta"),
    ([start(), round_of((0, "Apples", False), (0, "Pears", False))], "round.items[1].candidate"),
    # Candidate 1 was dropped by the second round: a delta for it cannot extend a text.
    ([start(), round_of((0, "Apples", False), (1, "Pears", False)), round_of((0, " are red", False)),
      round_of((0, "", False), (1, " are green", False))], "round.items[1].candidate"),
])
def test_a_bad_stream_is_invalid_argument_naming_the_field(reward, engine, messages, field):
    with pytest.raises(grpc.RpcError) as error:
        list(reward.ScoreSession(iter(messages), timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    assert field_violations(error.value)[0][0] == field
    wait_until_freed(engine)
    assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0


@pytest.mark.parametrize("opening, code, field", [
    (reward_pb2.ScoreSessionRequest(start=reward_pb2.ScoreSessionStart(messages=MESSAGES, tokenizer="another")),
     grpc.StatusCode.FAILED_PRECONDITION, "start.tokenizer"),
    (start([]), grpc.StatusCode.INVALID_ARGUMENT, "start.messages"),
])
def test_a_refused_start_is_read_in_answer_to_the_first_round(engine, opening, code, field):
    """A client writes `start` and its first round, then reads: the refusal, not a failed write."""
    loopback = LoopbackReward(RewardServicer(engine, model_name="tiny"))

    async def scenario():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{loopback.server.port}") as channel:
            call = reward_pb2_grpc.RewardStub(channel).ScoreSession(timeout=30)
            await call.write(opening)
            await asyncio.sleep(0.3)  # long enough for a refusal to reach the client first
            await call.write(round_of((0, "Apples", False)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            return refused.value

    try:
        error = asyncio.run(scenario())
    finally:
        loopback.stop()
    assert error.code() == code
    assert error.details().startswith(f"{field}: ")


def test_a_loading_service_is_unavailable():
    loopback = LoopbackReward(RewardServicer(model_name="tiny"))
    try:
        with pytest.raises(grpc.RpcError) as error:
            loopback.stub.Score(reward_pb2.ScoreRequest(messages=MESSAGES), timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        loopback.stop()


class CountingServicer(RewardServicer):
    """Counts the Info calls it answers, to tell when a client's channel reaches it."""

    def __init__(self, engine):
        super().__init__(engine, model_name="tiny")
        self.info_calls = 0

    async def Info(self, request, context):
        self.info_calls += 1
        return await super().Info(request, context)


@pytest.fixture
def two_replicas(logprob):
    engines = [new_engine(logprob) for _ in range(2)]
    servicers = [CountingServicer(e) for e in engines]
    loopbacks = [LoopbackReward(s) for s in servicers]
    yield engines, servicers, loopbacks
    for loopback in loopbacks:
        if loopback.thread.is_alive():
            loopback.stop()
    for engine in engines:
        engine.close()


async def connected_client(loopbacks, servicers) -> RewardClient:
    """A coordinator's reward client over both replicas, once its channel reaches each of them."""
    client = RewardClient("ipv4:" + ",".join(f"127.0.0.1:{l.server.port}" for l in loopbacks))
    for _ in range(200):
        if all(s.info_calls for s in servicers):
            break
        await client.stub.Info(reward_pb2.RewardInfoRequest(), timeout=5, wait_for_ready=True)
        await asyncio.sleep(0.01)
    assert all(s.info_calls for s in servicers)
    return client


def score_request(texts: list[str]) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(messages=MESSAGES, items=[reward_pb2.ScoreItem(response=t, candidate=c)
                                                             for c, t in enumerate(texts)])


def holders(engines) -> list[int]:
    """Sessions open on each replica."""
    return [len(e.sessions) for e in engines]


ROUNDS = [["Apples", "Pears"], ["Apples are red", "Pears are"], ["Apples are red and crisp", "Pears are sweet"]]


def test_each_request_keeps_all_its_rounds_on_one_replica(two_replicas):
    engines, servicers, loopbacks = two_replicas

    async def scenario():
        client = await connected_client(loopbacks, servicers)
        try:
            async with client.for_request(30) as first, client.for_request(30) as second:
                seen = []
                for texts in ROUNDS:
                    for calls in (first, second):
                        await calls.score(score_request(texts))
                    seen.append(holders(engines))
                return seen
        finally:
            await client.close()

    # Each replica holds one request's session from the first round to the last, never both, never
    # spread: every round of a request reached the replica its stream was opened on.
    assert asyncio.run(scenario()) == [[1, 1]] * len(ROUNDS)
    for engine in engines:
        wait_until_freed(engine)
        assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0


def test_a_lost_replica_mid_request_is_replaced_with_the_same_scores(two_replicas, logprob):
    engines, servicers, loopbacks = two_replicas

    async def scenario():
        client = await connected_client(loopbacks, servicers)
        try:
            async with client.for_request(30) as calls:
                answers = [await calls.score(score_request(ROUNDS[0]))]
                [lost] = [i for i, held in enumerate(holders(engines)) if held]
                # Stopped with the client's loop held: the stream's end reaches gRPC before the client
                # writes its next round, and that write finds the stream ended (a busy machine's order).
                loopbacks[lost].stop()
                for texts in ROUNDS[1:]:
                    answers.append(await calls.score(score_request(texts)))
                return lost, answers, holders(engines)[1 - lost]
        finally:
            await client.close()

    lost, answers, held_by_the_other = asyncio.run(scenario())
    assert held_by_the_other == 1
    for answer, texts in zip(answers, ROUNDS):
        expected = reference_scores(logprob, AS_DICTS, texts, [False] * len(texts))
        assert list(answer.scores) == pytest.approx(expected, abs=1e-4)
    # The new stream was sent the whole texts, so its first round read them all, the prompt too.
    prompt, bodies = logprob.tokenize(AS_DICTS, [Item(t) for t in ROUNDS[1]])
    assert answers[1].scored_tokens == len(prompt) + sum(map(len, bodies))
    wait_until_freed(engines[1 - lost])
    assert engines[1 - lost].sessions.nbytes == 0


class MisreportingServicer(RewardServicer):
    """Info answered as if by a replica with the caller's tokenizer, its own scorer's being another:
    a fleet mid-upgrade, whose Info and scoring streams reach different replicas."""

    def __init__(self, engine, reported: str):
        super().__init__(engine, model_name="tiny")
        self.reported = reported

    async def Info(self, request, context):
        info = await super().Info(request, context)
        info.tokenizer = self.reported
        return info


@pytest.mark.parametrize("replica", ["same tokenizer", "another tokenizer", "another behind a stale Info"])
def test_the_coordinator_sends_token_ids_only_to_a_reward_model_with_its_tokenizer(logprob, replica):
    tokenizer = logprob.tokenizer
    apples = pieced_ids(tokenizer, ["Ap", "ples", " are", " r", "ed"])
    fingerprint = tokenizer_fingerprint(tokenizer)
    engine = new_engine(logprob)
    if replica != "same tokenizer":
        engine.tokenizer_fingerprint = "another-tokenizer"
    servicer = MisreportingServicer(engine, fingerprint if replica.endswith("stale Info") else
                                    engine.tokenizer_fingerprint)
    loopback = LoopbackReward(servicer)

    async def scenario():
        client = RewardClient(f"127.0.0.1:{loopback.server.port}")
        try:
            async with client.for_request(30) as calls:
                answers = []
                for length in (3, len(apples)):
                    answers.append(await calls.score(reward_pb2.ScoreRequest(
                        messages=MESSAGES, tokenizer=fingerprint, items=[reward_pb2.ScoreItem(
                            response=tokenizer.decode(apples[:length]), token_ids=apples[:length])])))
                return answers, await client.tokenizer()
        finally:
            await client.close()

    try:
        answers, known = asyncio.run(scenario())
    finally:
        loopback.stop()
        engine.close()
    by_ids = replica == "same tokenizer"
    for answer, length in zip(answers, (3, len(apples))):
        response = apples[:length] if by_ids else tokenizer.decode(apples[:length])
        assert answer.scores[0] == pytest.approx(reference_mean_logprob(logprob, AS_DICTS, response, False), abs=1e-4)
    # After a refusal the client asks Info again; the replica still misreports.
    assert known == servicer.reported
