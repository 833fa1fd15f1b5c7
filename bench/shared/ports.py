"""Two ways to reach the generator and reward model, behind the ports the coordinator's Pipeline uses.

In process: the engine and scorer objects are called directly and their results turned into the
same protobuf messages the services send (generator_service.messages, reward_service.servicer).
Over gRPC: coordinator.clients, exactly as the coordinator uses them. A `Backend` runs one
GenerateRequest through the Pipeline either way, so the benchmark measures the real algorithm.
The ports are async (as the coordinator's are); the benchmark is not, so every Backend runs them on
one event loop of this module, the loop the loopback servers serve on too.
"""
from __future__ import annotations

import asyncio
import time

from common.chat import message_dicts
from coordinator.clients import GeneratorClient, RewardClient
from coordinator.pipeline import Pipeline
from coordinator.request import Limits, plan_request
from generator_service.messages import advanced_message, open_from_start, started_message
from reward_service.engine import ScoringEngine
from reward_service.servicer import score_items, score_response
from reward_service.sessions import SessionCache
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import generator_pb2, reward_pb2

# The benchmark sets n itself; the generator's memory budget is the only limit that matters.
MAX_N = 1 << 20
_loop: asyncio.AbstractEventLoop | None = None


def run_async(coroutine):
    """Run `coroutine` to its end on this module's event loop."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


class InProcessSession:
    """coordinator.clients.GeneratorSession's interface over a GeneratorEngine in this process.

    `kv_budget_tokens`, when set, gives this session a KV-cache budget of that many response tokens
    beyond its prompt (the prompt's keys/values are stored once, shared by every candidate), so that
    memory-driven decision points fall where the benchmark wants them."""

    def __init__(self, engine, kv_budget_tokens: int | None = None):
        self.engine, self.kv_budget_tokens = engine, kv_budget_tokens
        self.session = None

    async def start(self, start: generator_pb2.StartSession) -> generator_pb2.SessionStarted:
        self.session = open_from_start(self.engine, start, self.kv_budget_tokens)
        return started_message(await asyncio.wrap_future(self.session.start()), self.engine.tokenizer_fingerprint)

    async def advance(self, until_tokens: int, keep: list[int], fork_from: list[int]) -> generator_pb2.Advanced:
        return advanced_message(await asyncio.wrap_future(self.session.advance(until_tokens, keep, fork_from)))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def scoring_engine(scorer) -> ScoringEngine:
    """The reward service's engine around a scorer in this process; one caller, so no batching window."""
    return ScoringEngine(scorer, sessions=SessionCache(2 << 30), batch_window_seconds=0)


class InProcessReward:
    """coordinator.clients.RewardClient's interface over a scoring engine in this process."""

    def __init__(self, engine: ScoringEngine):
        self.engine = engine

    def for_request(self) -> "InProcessRewardCalls":
        return InProcessRewardCalls(self.engine)


class InProcessRewardCalls:
    """coordinator.clients.RewardCalls over a scoring engine: one scoring session per request, each
    call with the candidates' whole responses (nothing crosses a wire to save): token ids where the
    scorer's tokenizer is the generator's, as over gRPC, else text."""

    def __init__(self, engine: ScoringEngine):
        self.engine, self.session = engine, engine.open_session()

    async def score(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
        tokenizer = request.tokenizer if request.tokenizer == self.engine.tokenizer_fingerprint else ""
        future = self.engine.submit(message_dicts(request.messages), score_items(request, bool(tokenizer)),
                                    session=self.session, tokenizer=tokenizer)
        return score_response(await asyncio.wrap_future(future))

    async def __aenter__(self) -> "InProcessRewardCalls":
        return self

    async def __aexit__(self, *exc) -> None:
        self.engine.release(self.session)


async def run_pipeline(request: pb.GenerateRequest, session, reward, *,
                       memory_round_tokens: int) -> pb.GenerateResponse:
    """Run one request through the coordinator's Pipeline."""
    pipeline = Pipeline(plan_request(request, Limits(max_n=MAX_N, memory_round_tokens=memory_round_tokens)),
                        session, reward)
    await pipeline.start()
    result = None
    async for result in pipeline.events():
        pass
    return result


def timed(coroutine_function, *args, **kwargs) -> tuple[pb.GenerateResponse, float]:
    """Run a request; returns the response and the wall seconds from opening to closing the
    generator session (prefill, decoding, scoring, prunes)."""
    began = time.perf_counter()
    result = run_async(coroutine_function(*args, **kwargs))
    return result, time.perf_counter() - began


class InProcessBackend:
    name = "in-process"

    def __init__(self, engine, scorer, reward_model: str = ""):
        self.engine, self.scorer, self.reward_model = engine, scorer, reward_model
        self.reward = InProcessReward(scoring_engine(scorer))

    def run(self, request: pb.GenerateRequest, *, memory_round_tokens: int,
            kv_budget_tokens: int | None = None) -> tuple[pb.GenerateResponse, float]:
        session = InProcessSession(self.engine, kv_budget_tokens)

        async def run():
            try:
                async with self.reward.for_request() as reward:
                    return await run_pipeline(request, session, reward, memory_round_tokens=memory_round_tokens)
            finally:
                session.close()
        return timed(run)

    def describe(self) -> dict:
        engine = self.engine
        return {
            "backend": self.name,
            "generator": engine.model_name,
            "device": str(engine.device),
            "dtype": str(engine.dtype).removeprefix("torch."),
            "generator KV budget (bytes)": engine.budget_bytes,
            "KV bytes per token": engine.decoder.kv_bytes_per_token(),
            "row block (batch-invariant decoding)": engine.decoder.row_block,
            "reward": f"{self.scorer.name} ({self.reward_model})",
        }

    def close(self) -> None:
        pass


class GrpcBackend:
    """The generator and reward services, reached as the coordinator reaches them."""

    name = "grpc"

    def __init__(self, generator: str, reward: str, timeout: float = 3600.0):
        async def clients():  # grpc.aio channels belong to the loop they are made on
            return GeneratorClient(generator), RewardClient(reward)
        self.generator, self.reward = run_async(clients())
        self.timeout = timeout

    def run(self, request: pb.GenerateRequest, *, memory_round_tokens: int,
            kv_budget_tokens: int | None = None) -> tuple[pb.GenerateResponse, float]:
        if kv_budget_tokens is not None:
            raise ValueError("a per-run KV budget needs the in-process engine; over gRPC the generator "
                             "service's --kv-cache-budget applies (use the schedule `memory`)")

        async def run():
            async with self.generator.session(self.timeout) as session, \
                    self.reward.for_request(self.timeout) as reward:
                return await run_pipeline(request, session, reward, memory_round_tokens=memory_round_tokens)
        return timed(run)

    def describe(self) -> dict:
        from specrej.v1 import reward_pb2 as reward_messages

        generator = run_async(self.generator.stub.Info(generator_pb2.InfoRequest(), timeout=30))
        reward = run_async(self.reward.stub.Info(reward_messages.RewardInfoRequest(), timeout=30))
        return {
            "backend": f"{self.name} (generator {self.generator.target}, reward {self.reward.target})",
            "generator": generator.model,
            "device": generator.device,
            "dtype": generator.dtype,
            "generator KV budget (bytes)": generator.kv_cache_budget_bytes,
            "KV bytes per token": generator.kv_cache_bytes_per_token,
            "reward": f"{reward.scorer} ({reward.model}, {reward.device}/{reward.dtype})",
        }

    def close(self) -> None:
        run_async(self.generator.close())
        run_async(self.reward.close())


class LoopbackServices:
    """The real gRPC servicers around this process's engine and scorer, on loopback ports: the gRPC
    path with the very same engines, for measuring what the transport costs. They serve on this
    module's event loop, while a GrpcBackend's request runs on it."""

    def __init__(self, engine, scorer, model_name: str = ""):
        from common.server import Server, ServerOptions
        from generator_service.native_backend import NativeBackend
        from generator_service.servicer import GeneratorServicer
        from reward_service.servicer import RewardServicer
        from specrej.v1 import generator_pb2_grpc, reward_pb2_grpc

        async def start(service, descriptor, add, servicer):
            server = Server(service, [descriptor.full_name],
                            ServerOptions(host="127.0.0.1", port=0, metrics_port=0))
            add(servicer, server.grpc)
            await server.start()
            await server.mark_serving()
            return server

        self.servers = [run_async(start(*spec)) for spec in (
            ("generator", generator_pb2.DESCRIPTOR.services_by_name["Generator"],
             generator_pb2_grpc.add_GeneratorServicer_to_server, GeneratorServicer(NativeBackend(engine))),
            ("reward", reward_pb2.DESCRIPTOR.services_by_name["Reward"],
             reward_pb2_grpc.add_RewardServicer_to_server, RewardServicer(scoring_engine(scorer), model_name=model_name)),
        )]
        self.generator_address, self.reward_address = (f"127.0.0.1:{s.port}" for s in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            run_async(server.grpc.stop(1.0))
