"""The generator's gRPC servicer on a real grpc.aio server (tiny model): a client that cancels frees
its session, a full queue is RESOURCE_EXHAUSTED with a retry hint, bad input names the field."""
import asyncio
import time

import grpc
import pytest

from common.errors import RETRY_PUSHBACK_KEY
from common.server import Server, ServerOptions
from generator_service.engine import GeneratorEngine
from generator_service.native_backend import NativeBackend
from generator_service.servicer import GeneratorServicer
from specrej.v1 import common_pb2
from specrej.v1 import generator_pb2 as pb
from specrej.v1 import generator_pb2_grpc
from tests.generator.scripted import WAIT, wait_until


def start(content="Tell me about rivers.", n=4, max_new_tokens=300) -> pb.SessionCommand:
    return pb.SessionCommand(start=pb.StartSession(
        messages=[common_pb2.Message(role="user", content=content)], n=n, max_new_tokens=max_new_tokens,
        sampling=pb.SamplingParams(temperature=1, seed=1)))


ADVANCE = pb.SessionCommand(advance=pb.Advance(until_tokens=0))


def serve(engine, scenario) -> None:
    """Run `scenario(stub)` against the servicer on a loopback grpc.aio server."""
    async def main():
        server = Server("generator", [pb.DESCRIPTOR.services_by_name["Generator"].full_name],
                        ServerOptions(host="127.0.0.1", port=0, metrics_port=0))
        generator_pb2_grpc.add_GeneratorServicer_to_server(GeneratorServicer(NativeBackend(engine)), server.grpc)
        await server.start()
        await server.mark_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await asyncio.wait_for(scenario(generator_pb2_grpc.GeneratorStub(channel)), WAIT)
        finally:
            await server.grpc.stop(0)

    asyncio.run(main())


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=64 * 1024**2, max_sessions=1,
                             max_queued=1)
    yield engine
    engine.shutdown()


def test_clients_that_cancel_free_their_sessions_and_a_full_queue_is_refused_with_a_retry_hint(engine):
    async def scenario(stub):
        decoding = stub.Session()
        await decoding.write(start())
        assert (await decoding.read()).started.n == 4
        await decoding.write(ADVANCE)
        waiting = stub.Session()
        await waiting.write(start())
        await asyncio.to_thread(wait_until, lambda: engine.admission.queued == 1)
        refused = stub.Session()
        await refused.write(start())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await refused.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(error.value.trailing_metadata())[RETRY_PUSHBACK_KEY]) > 0
        decoding.cancel()  # the waiting one is admitted as soon as the decoding one is freed
        assert (await waiting.read()).started.n == 4
        waiting.cancel()
        await asyncio.to_thread(wait_until, lambda: not engine.sessions)

    serve(engine, scenario)
    assert engine.kv_cache_bytes() == 0 and engine.admission.free_tokens == engine.admission.budget_tokens


def test_a_prompt_over_the_limits_is_invalid_argument_naming_the_field(engine):
    async def scenario(stub):
        call = stub.Session()
        await call.write(start(content="x" * (1024 * 1024 + 1)))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("messages[0].content: 1048577 bytes; at most 1048576")

    serve(engine, scenario)


def advance(until, keep=(), fork_from=()):
    return pb.SessionCommand(advance=pb.Advance(until_tokens=until, keep=keep, fork_from=fork_from))


async def running_after_first_advance(stub):
    """A session of 4 candidates x 40 tokens advanced to 8: the call and its running indices."""
    call = stub.Session()
    await call.write(start(n=4, max_new_tokens=40))
    await call.read()
    await call.write(advance(8))
    return call, [u.index for u in (await call.read()).advanced.sequences if not u.finish_reason]


def test_an_advance_carrying_a_keep_list_prunes_first_in_the_same_round_trip(engine):
    seen = {}

    async def scenario(stub):
        call, seen["running"] = await running_after_first_advance(stub)
        await call.write(advance(16, seen["running"][:1]))
        seen["second"] = (await call.read()).advanced
        await call.write(advance(24, [99]))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        seen["error"] = error.value

    serve(engine, scenario)
    second, error = seen["second"], seen["error"]
    assert [u.index for u in second.sequences] == seen["running"][:1]
    assert second.sequences[0].num_tokens == 16 or second.sequences[0].finish_reason
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("keep:")


def test_an_advance_carrying_fork_from_branches_after_the_prune_and_refuses_a_parent_not_running(engine):
    seen = {}

    async def scenario(stub):
        call, running = await running_after_first_advance(stub)
        seen["parent"], seen["rejected"] = running[0], running[-1]
        await call.write(advance(16, running[:1], [running[0]] * 3))
        seen["second"] = (await call.read()).advanced
        await call.write(advance(24, (), [seen["rejected"]]))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        seen["error"] = error.value
        await asyncio.to_thread(wait_until, lambda: not engine.sessions)

    serve(engine, scenario)
    second, error = seen["second"], seen["error"]
    assert sorted(u.index for u in second.sequences) == [seen["parent"], 4, 5, 6]
    assert all(u.num_tokens == 16 for u in second.sequences)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("fork_from:")
    assert engine.kv_cache_bytes() == 0


def handled(code: str) -> float:
    from prometheus_client import REGISTRY

    labels = dict(service="generator", grpc_method="Session", grpc_code=code)
    return REGISTRY.get_sample_value("specrej_grpc_server_handled_total", labels) or 0.0


def test_a_session_whose_client_left_as_its_answer_was_written_counts_as_cancelled(engine, caplog):
    """The client cancels while the event loop is held, just after the generator answered an
    advance: the servicer writes that answer to a call that is already gone."""
    before = {code: handled(code) for code in ("CANCELLED", "INTERNAL")}

    async def scenario(stub):
        call = stub.Session()
        await call.write(start(max_new_tokens=40))
        await call.read()
        await call.write(pb.SessionCommand(advance=pb.Advance(until_tokens=3)))
        await asyncio.to_thread(wait_until, lambda: engine.sessions and engine.sessions[0].position >= 2)
        time.sleep(0.5)  # holds the loop (server and client share it) while the answer is queued
        call.cancel()
        time.sleep(0.5)  # and while the cancel reaches the server's transport
        await asyncio.to_thread(wait_until, lambda: not engine.sessions)
        await asyncio.to_thread(wait_until, lambda: sum(map(handled, before)) > sum(before.values()))

    with caplog.at_level("INFO"):
        serve(engine, scenario)
    assert (handled("CANCELLED"), handled("INTERNAL")) == (before["CANCELLED"] + 1, before["INTERNAL"])
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
