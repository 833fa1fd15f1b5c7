"""Two ways to reach the generator and reward model, behind the ports the coordinator's Pipeline uses.

In process: the engine and scorer objects are called directly and their results turned into the
same protobuf messages the services send (generator_service.messages, reward_service.servicer).
Over gRPC: coordinator.clients, exactly as the coordinator uses them. A `Backend` runs one
GenerateRequest through the Pipeline either way, so the benchmark measures the real algorithm.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc

from common.chat import PromptError
from common.errors import ServiceError as EngineError
from coordinator.clients import GeneratorClient, RewardClient, ServiceError
from coordinator.pipeline import Pipeline
from coordinator.request import plan_request
from generator_service.messages import advanced_message, open_from_start, pruned_message, started_message
from reward_service.servicer import score
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import generator_pb2, reward_pb2

# The benchmark sets n itself; the generator's memory budget is the only limit that matters.
MAX_N = 1 << 20


class InProcessSession:
    """coordinator.clients.GeneratorSession's interface over a GeneratorEngine in this process,
    through the servicer's own adapter (generator_service.messages); it waits for each answer.

    `kv_budget_tokens`, when set, reserves this session that many response tokens of KV cache
    beyond its prompt (the prompt's keys/values are stored once, shared by every candidate), so
    that memory-driven decision points fall where the benchmark wants them."""

    def __init__(self, engine, kv_budget_tokens: int | None = None):
        self.engine, self.kv_budget_tokens = engine, kv_budget_tokens
        self.session = None

    def start(self, start: generator_pb2.StartSession) -> generator_pb2.SessionStarted:
        with _as_client_error():
            self.session = open_from_start(self.engine, start, self.kv_budget_tokens)
            return started_message(self.session.start().result())

    def advance(self, until_tokens: int) -> generator_pb2.Advanced:
        with _as_client_error():
            return advanced_message(self.session.advance(until_tokens).result())

    def prune(self, keep: list[int]) -> generator_pb2.Pruned:
        with _as_client_error():
            return pruned_message(self.session.prune(list(keep)).result())

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


@contextlib.contextmanager
def _as_client_error():
    """The engine's errors as the gRPC client would raise them."""
    try:
        yield
    except EngineError as error:
        raise ServiceError(error.code, error.message) from error


class InProcessReward:
    """coordinator.clients.RewardClient's interface over a scorer in this process."""

    def __init__(self, scorer):
        self.scorer = scorer

    def score(self, request: reward_pb2.ScoreRequest, timeout: float | None = None) -> reward_pb2.ScoreResponse:
        try:
            response, _ = score(self.scorer, request)
        except PromptError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"messages: {error}") from error
        return response


def run_pipeline(request: pb.GenerateRequest, session, reward, *, memory_round_tokens: int) -> tuple[pb.GenerateResponse, float]:
    """Run one request through the coordinator's Pipeline; returns the response and the wall seconds
    from opening to closing the generator session (prefill, decoding, scoring, prunes)."""
    began = time.perf_counter()
    try:
        pipeline = Pipeline(plan_request(request, max_n=MAX_N), session, reward, memory_round_tokens=memory_round_tokens)
        pipeline.start()
        result = None
        for result in pipeline.events():
            pass
    finally:
        session.close()
    return result, time.perf_counter() - began


class InProcessBackend:
    name = "in-process"

    def __init__(self, engine, scorer, reward_model: str = ""):
        self.engine, self.scorer, self.reward_model = engine, scorer, reward_model
        self.reward = InProcessReward(scorer)

    def run(self, request: pb.GenerateRequest, *, memory_round_tokens: int,
            kv_budget_tokens: int | None = None) -> tuple[pb.GenerateResponse, float]:
        session = InProcessSession(self.engine, kv_budget_tokens)
        return run_pipeline(request, session, self.reward, memory_round_tokens=memory_round_tokens)

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
        self.generator, self.reward = GeneratorClient(generator), RewardClient(reward)
        self.timeout = timeout

    def run(self, request: pb.GenerateRequest, *, memory_round_tokens: int,
            kv_budget_tokens: int | None = None) -> tuple[pb.GenerateResponse, float]:
        if kv_budget_tokens is not None:
            raise ValueError("a per-run KV budget needs the in-process engine; over gRPC the generator "
                             "service's --kv-cache-budget applies (use the schedule `memory`)")
        session = self.generator.open(self.timeout)
        return run_pipeline(request, session, self.reward, memory_round_tokens=memory_round_tokens)

    def describe(self) -> dict:
        from specrej.v1 import reward_pb2 as reward_messages

        generator = self.generator.stub.Info(generator_pb2.InfoRequest(), timeout=30)
        reward = self.reward.stub.Info(reward_messages.RewardInfoRequest(), timeout=30)
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
        self.generator.channel.close()
        self.reward.channel.close()


class LoopbackServices:
    """The real gRPC servicers around this process's engine and scorer, on loopback ports: the gRPC
    path with the very same engines, for measuring what the transport costs. The grpc.aio servers
    run on an event loop of their own thread, as they would in their own processes."""

    def __init__(self, engine, scorer, model_name: str = ""):
        from common.server import Server, ServerOptions
        from generator_service.servicer import GeneratorServicer
        from reward_service.servicer import RewardServicer
        from specrej.v1 import generator_pb2_grpc, reward_pb2_grpc

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-services", daemon=True)
        self._thread.start()
        self.servers = []
        for service, descriptor, add, servicer in (
            ("generator", generator_pb2.DESCRIPTOR.services_by_name["Generator"],
             generator_pb2_grpc.add_GeneratorServicer_to_server, GeneratorServicer(engine)),
            ("reward", reward_pb2.DESCRIPTOR.services_by_name["Reward"],
             reward_pb2_grpc.add_RewardServicer_to_server, RewardServicer(scorer, model_name=model_name)),
        ):
            options = ServerOptions(host="127.0.0.1", port=0, metrics_port=0)
            self.servers.append(self._run(self._serve(Server, service, descriptor, options, add, servicer)))
        self.generator_address, self.reward_address = (f"127.0.0.1:{s.port}" for s in self.servers)

    @staticmethod
    async def _serve(server_type, service, descriptor, options, add, servicer):
        # grpc.aio servers belong to the event loop they are made on: made here, on the services' loop.
        server = server_type(service, [descriptor.full_name], options)
        add(servicer, server.grpc)
        await server.start()
        await server.mark_serving()
        return server

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        for server in self.servers:
            self._run(server.grpc.stop(1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
