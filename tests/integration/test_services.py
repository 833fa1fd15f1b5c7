"""All three services as real gRPC servers on loopback, on the tiny model."""
import threading
import time

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import common_pb2, coordinator_pb2_grpc, generator_pb2, generator_pb2_grpc
from common.local_stack import Service, free_port

PROMPT = "Describe a lighthouse in two sentences."


@pytest.fixture(scope="module")
def coordinator(tiny_stack):
    return coordinator_pb2_grpc.CoordinatorStub(tiny_stack.channel)


def generator_info(stack) -> generator_pb2.InfoResponse:
    with grpc.insecure_channel(stack.generator.address) as channel:
        return generator_pb2_grpc.GeneratorStub(channel).Info(generator_pb2.InfoRequest(), timeout=5)


def wait_for_no_sessions(stack, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    while (active := generator_info(stack).active_sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    return active


def request(**fields) -> pb.GenerateRequest:
    defaults = dict(prompt=PROMPT, n=16, max_new_tokens=40, seed=42)
    return pb.GenerateRequest(**{**defaults, **fields})


def test_reflection_lists_the_public_service(tiny_stack):
    database = ProtoReflectionDescriptorDatabase(tiny_stack.channel)
    services = database.get_services()
    assert "specrej.v1.Coordinator" in services and "grpc.health.v1.Health" in services
    service = descriptor_pool.DescriptorPool(database).FindServiceByName("specrej.v1.Coordinator")
    assert {m.name for m in service.methods} >= {"Generate", "GenerateStream"}
    assert service.methods_by_name["GenerateStream"].server_streaming


def test_speculative_rejection_returns_a_best_response_after_several_rounds(coordinator):
    response = coordinator.Generate(request(decision_every_tokens=8, rejection_rate=0.5, return_top=3), timeout=60)
    rounds = response.stats.rounds
    assert len(rounds) >= 2
    assert [r.active_before for r in rounds][:3] == [16, 8, 4]
    assert all(r.rejected == r.active_before // 2 for r in rounds)
    assert [r.token_position for r in rounds][:3] == [8, 16, 24]
    assert response.best.text and response.best.finish_reason in ("stop", "length")
    assert response.ranked[0] == response.best
    assert [c.score for c in response.ranked] == sorted((c.score for c in response.ranked), reverse=True)
    assert response.stats.initial_n == 16 and response.stats.prompt_tokens > 0


def test_memory_driven_decision_points_fall_where_the_cache_fills(coordinator):
    response = coordinator.Generate(request(max_new_tokens=300, first_decision_tokens=0, rejection_rate=0.5),
                                    timeout=60)
    rounds = response.stats.rounds
    assert len(rounds) >= 2 and all(r.trigger == "memory" for r in rounds)
    # Halving the batch doubles the room: decision points fall at roughly doubling lengths.
    assert rounds[1].token_position >= 1.8 * rounds[0].token_position


def test_zero_rejection_rate_returns_exactly_what_best_of_n_returns(coordinator):
    best_of_n = coordinator.Generate(request(method=pb.BEST_OF_N, return_top=16), timeout=60)
    speculative = coordinator.Generate(request(rejection_rate=0.0, decision_every_tokens=10, return_top=16), timeout=60)
    assert len(speculative.stats.rounds) >= 2 and all(r.rejected == 0 for r in speculative.stats.rounds)
    assert list(speculative.ranked) == list(best_of_n.ranked)
    assert speculative.best == best_of_n.best
    assert speculative.stats.generated_tokens == best_of_n.stats.generated_tokens


def test_speculative_rejection_decodes_fewer_tokens_than_best_of_n(coordinator):
    best_of_n = coordinator.Generate(request(method=pb.BEST_OF_N, return_top=16), timeout=60)
    speculative = coordinator.Generate(request(decision_every_tokens=8), timeout=60)
    assert speculative.stats.generated_tokens < best_of_n.stats.generated_tokens / 2
    # Same seed, same sampler: the winner's text is the text that candidate has under Best-of-N.
    by_index = {c.index: c.text for c in best_of_n.ranked}
    assert speculative.best.text == by_index[speculative.best.index]


def test_stream_sends_each_decision_point_then_the_result(coordinator):
    events = list(coordinator.GenerateStream(request(decision_every_tokens=10), timeout=60))
    rounds = [e.round for e in events[:-1]]
    assert all(e.HasField("round") for e in events[:-1]) and events[-1].HasField("result")
    assert rounds == list(events[-1].result.stats.rounds) and len(rounds) >= 2


@pytest.mark.parametrize("fields, field_name", [
    (dict(prompt=""), "prompt"),
    (dict(prompt="   "), "prompt"),
    (dict(n=100000), "n"),
    (dict(n=500, max_new_tokens=40), "n"),
    (dict(rejection_rate=1.0), "rejection_rate"),
    (dict(rejection_rate=-0.1), "rejection_rate"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=5000), "max_new_tokens"),
    (dict(method=7), "method"),
    (dict(messages=[common_pb2.Message(role="robot", content="hi")], prompt=""), "messages[0].role"),
])
def test_bad_input_gets_invalid_argument_naming_the_field(coordinator, tiny_stack, fields, field_name):
    with pytest.raises(grpc.RpcError) as error:
        coordinator.Generate(request(**fields), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field_name}:"), error.value.details()
    assert wait_for_no_sessions(tiny_stack) == 0


def test_a_cancelled_request_frees_its_generator_session(coordinator, tiny_stack):
    stream = coordinator.GenerateStream(request(n=16, max_new_tokens=900, decision_every_tokens=0), timeout=120)
    first = next(stream)
    assert first.HasField("round")
    assert generator_info(tiny_stack).active_sessions == 1
    stream.cancel()
    assert wait_for_no_sessions(tiny_stack) == 0
    assert "session cancelled by its client" in tiny_stack.generator.log()


def test_a_passed_deadline_frees_the_session_too(coordinator, tiny_stack):
    with pytest.raises(grpc.RpcError) as error:
        coordinator.Generate(request(n=16, max_new_tokens=900), timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_no_sessions(tiny_stack) == 0


def test_concurrent_requests_get_the_results_they_would_get_alone(coordinator):
    requests = [request(seed=seed, decision_every_tokens=8, return_top=4) for seed in (1, 2, 3, 4)]
    alone = [coordinator.Generate(r, timeout=60) for r in requests]
    together = [None] * len(requests)

    def send(position):
        together[position] = coordinator.Generate(requests[position], timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [list(r.ranked) for r in together] == [list(r.ranked) for r in alone]


def test_a_reward_service_that_is_down_gives_unavailable_within_the_deadline(tiny_stack, service_logs):
    orphan = Service("coordinator", "--generator", tiny_stack.generator.address, "--reward",
                     f"127.0.0.1:{free_port()}", log_dir=service_logs)
    try:
        with grpc.insecure_channel(orphan.address) as channel:
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                coordinator_pb2_grpc.CoordinatorStub(channel).Generate(request(decision_every_tokens=8), timeout=20)
            assert time.monotonic() - began < 20
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "reward service" in error.value.details()
        assert wait_for_no_sessions(tiny_stack) == 0
    finally:
        orphan.stop()


def test_a_generator_that_is_down_gives_unavailable(service_logs, tiny_stack):
    orphan = Service("coordinator", "--generator", f"127.0.0.1:{free_port()}", "--reward", tiny_stack.reward.address,
                     log_dir=service_logs)
    try:
        with grpc.insecure_channel(orphan.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                coordinator_pb2_grpc.CoordinatorStub(channel).Generate(request(), timeout=20)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "generator service" in error.value.details()
    finally:
        orphan.stop()


def test_overload_gets_resource_exhausted(tiny_model_dir, tiny_stack, service_logs):
    generator = Service("generator_service", "--model", str(tiny_model_dir), "--max-sessions", "1", "--max-queued", "0",
                        log_dir=service_logs)
    coordinator_service = Service("coordinator", "--generator", generator.address, "--reward",
                                  tiny_stack.reward.address, log_dir=service_logs)
    try:
        with grpc.insecure_channel(coordinator_service.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            busy = stub.GenerateStream(request(n=8, max_new_tokens=900, decision_every_tokens=50), timeout=120)
            next(busy)  # the only session is now taken
            with pytest.raises(grpc.RpcError) as error:
                stub.Generate(request(), timeout=20)
            busy.cancel()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        coordinator_service.stop()
        generator.stop()
