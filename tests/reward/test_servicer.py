"""The reward servicer on a real grpc.aio server on loopback: translation, sessions and statuses."""
import asyncio
import threading

import grpc
import pytest

from common.errors import field_violations
from common.server import Server, ServerOptions
from reward_service.engine import ScoringEngine
from reward_service.limits import InputLimits
from reward_service.servicer import RewardServicer
from reward_service.sessions import SessionCache
from specrej.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from tests.reward.conftest import reference_scores

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


@pytest.fixture(scope="module")
def engine(logprob):
    engine = ScoringEngine(logprob, sessions=SessionCache(1 << 30, 60), batch_window_seconds=0.002,
                           limits=InputLimits(max_context=1024, max_items=8, max_response_tokens=32))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reward(engine):
    loopback = LoopbackReward(RewardServicer(engine, model_name="tiny"))
    yield loopback.stub
    loopback.stop()


def test_score_in_a_session_then_release(reward, logprob, engine):
    first = reward.Score(reward_pb2.ScoreRequest(
        messages=MESSAGES, session="g1",
        items=[reward_pb2.ScoreItem(response="Apples", candidate=0), reward_pb2.ScoreItem(response="Pears", candidate=3)],
    ), timeout=30)
    second = reward.Score(reward_pb2.ScoreRequest(
        messages=MESSAGES, session="g1",
        items=[reward_pb2.ScoreItem(response="Pears are sweet.", complete=True, candidate=3)],
    ), timeout=30)
    assert list(first.scores) == pytest.approx(reference_scores(logprob, AS_DICTS, ["Apples", "Pears"], [False] * 2),
                                               abs=1e-4)
    assert list(second.scores) == pytest.approx(reference_scores(logprob, AS_DICTS, ["Pears are sweet."], [True]),
                                                abs=1e-4)
    whole = len(logprob.tokenizer("Pears are sweet.", add_special_tokens=False).input_ids) + 1
    assert 0 < second.scored_tokens < whole
    assert reward.Release(reward_pb2.ReleaseRequest(session="g1"), timeout=30).freed_bytes > 0
    assert reward.Release(reward_pb2.ReleaseRequest(session="g1"), timeout=30).freed_bytes == 0
    assert engine.sessions.nbytes == 0


def test_info_names_the_scorer(reward):
    info = reward.Info(reward_pb2.RewardInfoRequest(), timeout=30)
    assert (info.model, info.scorer, info.device, info.dtype) == ("tiny", "lm-logprob", "cpu", "float32")


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


def test_a_loading_service_is_unavailable():
    loopback = LoopbackReward(RewardServicer(model_name="tiny"))
    try:
        with pytest.raises(grpc.RpcError) as error:
            loopback.stub.Score(reward_pb2.ScoreRequest(messages=MESSAGES), timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        loopback.stop()
