"""A request runs at most the coordinator's drain grace (what a drain lets a call in flight finish
in), whatever deadline its client set; one cut short says so. An in-process coordinator server in
front of a generator that is slower than the grace, on loopback."""
import asyncio

import grpc
import pytest

from common.server import Server, ServerOptions
from coordinator.admission import Admission
from coordinator.clients import GeneratorClient, RewardClient
from coordinator.request import Limits
from coordinator.servicer import CoordinatorServicer
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc, reward_pb2
from tests.integration.test_fleet import start_replica

REWARD = reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name


async def serve(server: Server) -> Server:
    await server.start()
    await server.mark_serving()
    return server


def test_a_deadline_beyond_the_drain_grace_is_cut_to_it_with_a_status_that_says_so():
    async def scenario():
        generator, _ = await start_replica(0, answer_after_seconds=30)
        # Only its health is asked before the generator session opens.
        reward = await serve(Server("reward", [REWARD], ServerOptions(host="127.0.0.1", port=0, metrics_port=0)))
        coordinator = Server("coordinator", [pb.DESCRIPTOR.services_by_name["Coordinator"].full_name],
                             ServerOptions(host="127.0.0.1", port=0, metrics_port=0, drain_grace_seconds=1.0))
        clients = GeneratorClient(f"127.0.0.1:{generator.port}"), RewardClient(f"127.0.0.1:{reward.port}")
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            CoordinatorServicer(*clients, Admission(4, 4, "coordinator"), Limits(), default_timeout=60,
                                max_request_seconds=coordinator.options.drain_grace_seconds), coordinator.grpc)
        await serve(coordinator)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as cut:
                    await coordinator_pb2_grpc.CoordinatorStub(channel).Generate(
                        pb.GenerateRequest(prompt="Name a colour.", n=2, max_new_tokens=4), timeout=60)
            return cut.value
        finally:
            # The clients first: closing them cancels the generator call still waiting, so that no
            # server is stopped under a call in flight.
            for client in clients:
                await client.close()
            for server in (coordinator, generator, reward):
                await server.drain(grace=0)

    cut = asyncio.run(scenario())
    assert cut.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cut.details() == ("the request ran for the coordinator's limit of 1 s (its drain grace), "
                             "which is shorter than the request's deadline")
