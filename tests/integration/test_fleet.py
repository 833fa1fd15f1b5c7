"""Two replicas of a service behind one name, as the coordinator reaches them: a draining replica's
clients move to the other without a failure, a replica whose health is not SERVING gets no calls,
and a call a replica refused before its servicer ran is retried on the other, but a session that
has had an answer never is. Real grpc.aio servers (common.server) on loopback, in this process."""
import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import errors
from common.server import Server, ServerOptions
from coordinator.clients import GeneratorClient
from specrej.v1 import generator_pb2, generator_pb2_grpc

GENERATOR = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name


class Replica(generator_pb2_grpc.GeneratorServicer):
    """Answers Info with its number, and each session command (after `answer_after_seconds`) with an
    event carrying its number."""

    def __init__(self, number: int, fail_after_first_event: bool = False, answer_after_seconds: float = 0.0):
        self.number, self.fail_after_first_event = number, fail_after_first_event
        self.answer_after_seconds = answer_after_seconds
        self.calls = 0  # calls its servicer ran

    async def Info(self, request, context):
        self.calls += 1
        return generator_pb2.InfoResponse(max_context_tokens=self.number)

    async def Session(self, commands, context):
        self.calls += 1
        answered = False
        async for _ in commands:
            if answered and self.fail_after_first_event:
                raise errors.Unavailable("this replica lost the session")
            answered = True
            await asyncio.sleep(self.answer_after_seconds)
            yield generator_pb2.SessionEvent(started=generator_pb2.SessionStarted(n=self.number))


async def start_replica(number: int, serving: bool = True, **behaviour) -> tuple[Server, Replica]:
    server = Server("generator", [GENERATOR], ServerOptions(host="127.0.0.1", port=0, metrics_port=0))
    replica = Replica(number, **behaviour)
    generator_pb2_grpc.add_GeneratorServicer_to_server(replica, server.grpc)
    await server.start()
    if serving:
        await server.mark_serving()
    return server, replica


def target(*servers: Server) -> str:
    """One name for all the replicas, as a headless Service's DNS name is."""
    return "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)


async def answering_replica(client: GeneratorClient) -> int:
    return (await client.stub.Info(generator_pb2.InfoRequest(), timeout=5)).max_context_tokens


async def accepts_connections(server: Server) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as fresh:
        try:
            await health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            return False
    return True


async def session_on(client: GeneratorClient, number: int):
    """(a session on replica `number`, what closes it): round robin opens sessions until one lands there."""
    while True:
        held = contextlib.AsyncExitStack()
        session = await held.enter_async_context(client.session(timeout=30))
        if (await session.start(generator_pb2.StartSession())).n == number:
            return session, held
        await held.aclose()


async def run_session(client: GeneratorClient, commands: int) -> list[int]:
    """The replica numbers a session's events carry."""
    async with client.session(timeout=10) as session:
        return [(await session.start(generator_pb2.StartSession())).n for _ in range(commands)]


def test_a_draining_replicas_clients_move_to_the_other_without_a_failure():
    async def scenario():
        (draining, _), (staying, _) = await start_replica(0), await start_replica(1)
        client = GeneratorClient(target(draining, staying))
        try:
            # A session on the replica about to drain, still open when the drain starts.
            session, held = await session_on(client, 0)
            seen_during_drain = []
            drained = asyncio.Event()

            async def load():
                while not drained.is_set():
                    seen_during_drain.extend(await run_session(client, 2))
                    seen_during_drain.append(await answering_replica(client))
            loads = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(0.1)
            drain = asyncio.create_task(draining.drain(grace=20))
            # Load goes on until the draining replica, its session still running, takes no new connection.
            for _ in range(100):
                if not await accepts_connections(draining):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the draining replica still took connections 10 s into its drain")
            drained.set()
            await asyncio.gather(*loads)  # any failure raises here
            # The session in flight finishes on its replica, and the drain ends when it does.
            assert (await session.start(generator_pb2.StartSession())).n == 0
            assert not drain.done()
            await held.aclose()
            await asyncio.wait_for(drain, 10)
            after = [await answering_replica(client) for _ in range(10)]
            return seen_during_drain, after
        finally:
            await client.close()
            await staying.drain(grace=0)

    seen_during_drain, after = asyncio.run(scenario())
    assert len(seen_during_drain) > 0 and set(seen_during_drain) <= {0, 1}
    assert after == [1] * 10


def test_a_replica_whose_health_is_not_serving_gets_no_calls_until_it_is():
    async def scenario():
        (loading, _), (serving, _) = await start_replica(0, serving=False), await start_replica(1)
        client = GeneratorClient(target(loading, serving))
        try:
            while_loading = [await answering_replica(client) for _ in range(20)]
            await loading.mark_serving()
            once_serving = set()
            for _ in range(200):  # until both have answered, a few seconds at most
                once_serving.add(await answering_replica(client))
                if once_serving == {0, 1}:
                    break
                await asyncio.sleep(0.02)
            return while_loading, once_serving
        finally:
            await client.close()
            for server in (loading, serving):
                await server.drain(grace=0)

    while_loading, once_serving = asyncio.run(scenario())
    assert while_loading == [1] * 20
    assert once_serving == {0, 1}


def test_a_call_refused_before_its_servicer_ran_is_retried_on_the_other_replica():
    async def scenario():
        (refusing, refusing_replica), (serving, serving_replica) = await start_replica(0), await start_replica(1)
        # Health still SERVING and no GOAWAY yet: the moment a drain has begun but clients do not know.
        refusing.state.draining = True
        client = GeneratorClient(target(refusing, serving))
        try:
            answers = [await answering_replica(client) for _ in range(10)]
            sessions = [await run_session(client, 2) for _ in range(10)]
            return answers, sessions, refusing_replica.calls, serving_replica.calls
        finally:
            await client.close()
            for server in (refusing, serving):
                await server.drain(grace=0)

    answers, sessions, refused_calls, served_calls = asyncio.run(scenario())
    assert answers == [1] * 10 and sessions == [[1, 1]] * 10
    assert refused_calls == 0 and served_calls == 20


def test_a_session_that_has_had_an_answer_is_not_replayed_on_another_replica():
    async def scenario():
        (failing, _), (other, other_replica) = (
            await start_replica(0, fail_after_first_event=True), await start_replica(1))
        client = GeneratorClient(target(failing, other))
        try:
            session, held = await session_on(client, 0)
            sessions_on_other = other_replica.calls
            with pytest.raises(errors.Unavailable):
                await session.start(generator_pb2.StartSession())
            await held.aclose()
            return sessions_on_other, other_replica.calls
        finally:
            await client.close()
            for server in (failing, other):
                await server.drain(grace=0)

    before, after = asyncio.run(scenario())
    assert after == before
