"""All three services as real gRPC servers on loopback, on the tiny model."""
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import common_pb2, coordinator_pb2_grpc, generator_pb2, generator_pb2_grpc
from common.errors import RETRY_PUSHBACK_KEY
from common.local_stack import Service, free_port
from .observe import assert_same_answer, metric, request_lines, scrape

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


def tagged() -> tuple[str, tuple]:
    """A request id and the metadata that sends it."""
    request_id = f"test-{uuid.uuid4().hex[:12]}"
    return request_id, (("x-request-id", request_id),)


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
    assert_same_answer(speculative, best_of_n)
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
    (dict(prompt="x" * 1_000_001), "prompt"),
    (dict(messages=[common_pb2.Message(role="user", content="hi")] * 257, prompt=""), "messages"),
    (dict(decision_points=range(1, 1026)), "decision_points"),
])
def test_bad_input_gets_invalid_argument_naming_the_field(coordinator, tiny_stack, fields, field_name):
    with pytest.raises(grpc.RpcError) as error:
        coordinator.Generate(request(**fields), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field_name}:"), error.value.details()
    assert wait_for_no_sessions(tiny_stack) == 0


def test_bytes_that_do_not_parse_get_invalid_argument(tiny_stack):
    generate = tiny_stack.channel.unary_unary("/specrej.v1.Coordinator/Generate")  # bytes in, bytes out
    prompt_with_invalid_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (prompt), 2 bytes that are not UTF-8
    with pytest.raises(grpc.RpcError) as error:
        generate(prompt_with_invalid_utf8, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("request:")


def test_the_request_id_reaches_every_service_and_comes_back(coordinator, tiny_stack):
    request_id, metadata = tagged()
    response, call = coordinator.Generate.with_call(request(decision_every_tokens=8), timeout=60, metadata=metadata)
    assert dict(call.trailing_metadata())["x-request-id"] == request_id
    [line] = request_lines(tiny_stack.coordinator.log(), request_id)
    assert line["method"] == "Generate" and line["code"] == "OK" and line["n"] == 16 \
        and line["alpha"] == pytest.approx(response.stats.rejection_rate)
    assert line["decision_points"] == len(response.stats.rounds)
    assert line["tokens_decoded"] == response.stats.generated_tokens
    assert line["tokens_scored"] == response.stats.scored_tokens
    assert line["generate_seconds"] > 0 and line["score_seconds"] > 0
    assert [g["method"] for g in request_lines(tiny_stack.generator.log(), request_id)] == ["Session"]
    # One scoring stream, with a round per decision point and one to rank the finalists, ended by the request.
    [scoring] = request_lines(tiny_stack.reward.log(), request_id)
    assert (scoring["method"], scoring["code"]) == ("ScoreSession", "OK")
    assert scoring["rounds"] == len(response.stats.rounds) + 1
    assert scoring["tokens_scored"] == response.stats.scored_tokens
    # One model, one tokenizer: the candidates' tokens went to the reward model as ids, not as text.
    assert scoring["responses_as"] == "token ids"


def test_a_failed_request_returns_its_request_id_too(coordinator, tiny_stack):
    with pytest.raises(grpc.RpcError) as error:
        coordinator.Generate(request(prompt=""), timeout=10)
    request_id = dict(error.value.trailing_metadata())["x-request-id"]
    [line] = request_lines(tiny_stack.coordinator.log(), request_id)
    assert line["code"] == "INVALID_ARGUMENT"


def test_a_cancelled_request_frees_its_generator_session(coordinator, tiny_stack):
    request_id, metadata = tagged()
    before = scrape(tiny_stack.coordinator)
    stream = coordinator.GenerateStream(request(n=16, max_new_tokens=900, decision_every_tokens=0), timeout=120,
                                        metadata=metadata)
    first = next(stream)
    assert first.HasField("round")
    assert generator_info(tiny_stack).active_sessions == 1
    stream.cancel()
    assert wait_for_no_sessions(tiny_stack) == 0
    assert [line["code"] for line in request_lines(tiny_stack.generator.log(), request_id)] == ["CANCELLED"]
    after = scrape(tiny_stack.coordinator)
    cancelled = dict(name="specrej_requests_total", service="coordinator", code="CANCELLED")
    assert metric(after, **cancelled) == metric(before, **cancelled) + 1


def test_a_passed_deadline_frees_the_session_too(coordinator, tiny_stack):
    before = scrape(tiny_stack.coordinator)
    with pytest.raises(grpc.RpcError) as error:
        coordinator.Generate(request(n=16, max_new_tokens=900), timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_no_sessions(tiny_stack) == 0
    deadline = dict(name="specrej_requests_total", service="coordinator", code="DEADLINE_EXCEEDED")
    # The client's deadline fires on its own clock; the server counts the call once it notices.
    give_up = time.monotonic() + 5
    while metric(scrape(tiny_stack.coordinator), **deadline) == metric(before, **deadline) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert metric(scrape(tiny_stack.coordinator), **deadline) == metric(before, **deadline) + 1


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


def test_the_coordinator_and_the_generator_count_the_same_decoded_tokens(coordinator, tiny_stack):
    coordinator_before, generator_before = scrape(tiny_stack.coordinator), scrape(tiny_stack.generator)
    response = coordinator.Generate(request(decision_every_tokens=8), timeout=60)
    decoded = metric(scrape(tiny_stack.coordinator), "specrej_decoded_tokens_total") - metric(
        coordinator_before, "specrej_decoded_tokens_total")
    generated = metric(scrape(tiny_stack.generator), "specrej_generator_tokens_total") - metric(
        generator_before, "specrej_generator_tokens_total")
    assert decoded == generated == response.stats.generated_tokens > 0


def test_a_reward_service_that_is_down_gives_unavailable_before_any_decoding(tiny_stack, service_logs):
    dead_reward = f"127.0.0.1:{free_port()}"
    orphan = Service("coordinator", "--generator", tiny_stack.generator.address, "--reward", dead_reward,
                     log_dir=service_logs)
    request_id, metadata = tagged()
    try:
        with grpc.insecure_channel(orphan.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                stub.Generate(request(decision_every_tokens=8), timeout=20, metadata=metadata)
            assert time.monotonic() - began < 1.0
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details() == "the reward service is unavailable"
        # The generator never saw the request; the address is in the coordinator's log only.
        assert request_lines(tiny_stack.generator.log(), request_id) == []
        assert dead_reward in orphan.log()
    finally:
        orphan.stop()


def test_a_generator_that_is_down_gives_unavailable(service_logs, tiny_stack):
    dead_generator = f"127.0.0.1:{free_port()}"
    orphan = Service("coordinator", "--generator", dead_generator, "--reward", tiny_stack.reward.address,
                     log_dir=service_logs)
    try:
        with grpc.insecure_channel(orphan.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                coordinator_pb2_grpc.CoordinatorStub(channel).Generate(request(), timeout=20)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details() == "the generator service is unavailable"
        assert dead_generator in orphan.log()
    finally:
        orphan.stop()


def test_a_busy_generator_gives_resource_exhausted_with_its_retry_hint(tiny_model_dir, tiny_stack, service_logs):
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
        assert int(dict(error.value.trailing_metadata())[RETRY_PUSHBACK_KEY]) > 0
    finally:
        coordinator_service.stop()
        generator.stop()


def test_a_full_coordinator_turns_requests_away_at_once(tiny_stack, service_logs):
    coordinator_service = Service("coordinator", "--generator", tiny_stack.generator.address, "--reward",
                                  tiny_stack.reward.address, "--max-concurrent", "1", "--max-queued", "0",
                                  log_dir=service_logs)
    try:
        with grpc.insecure_channel(coordinator_service.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            busy = stub.GenerateStream(request(n=8, max_new_tokens=900, decision_every_tokens=50), timeout=120)
            next(busy)  # the only running slot is now taken, and no one may wait
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                stub.Generate(request(), timeout=20)
            waited = time.monotonic() - began
            busy.cancel()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and waited < 1.0
        assert int(dict(error.value.trailing_metadata())[RETRY_PUSHBACK_KEY]) > 0
        assert metric(scrape(coordinator_service), "specrej_admission_rejected_total", service="coordinator") == 1
    finally:
        coordinator_service.stop()


def test_each_decision_point_reads_only_new_tokens_and_the_session_is_released(coordinator, tiny_stack):
    response = coordinator.Generate(request(decision_every_tokens=8, rejection_rate=0.5), timeout=60)
    stats = response.stats
    assert len(stats.rounds) >= 2
    # Recomputing every prefix at every decision point reads each live candidate's whole response
    # again; a scoring session reads each token once (plus the end-of-turn token of finished ones).
    prompt_reads = stats.prompt_tokens * (len(stats.rounds) + 1)
    assert stats.scored_tokens <= stats.generated_tokens + stats.initial_n + prompt_reads
    deadline = time.monotonic() + 5
    while metric(scrape(tiny_stack.reward), "specrej_reward_session_cache_sessions") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(scrape(tiny_stack.reward), "specrej_reward_session_cache_sessions") == 0


def test_scoring_ahead_changes_when_the_reward_model_reads_not_what_is_decided(tiny_stack, service_logs):
    at_decision_points_only = Service("coordinator", "--generator", tiny_stack.generator.address, "--reward",
                                      tiny_stack.reward.address, "--score-ahead-tokens", "0", log_dir=service_logs)
    scoring_ahead = Service("coordinator", "--generator", tiny_stack.generator.address, "--reward",
                            tiny_stack.reward.address, "--score-ahead-tokens", "3", log_dir=service_logs)
    try:
        responses, scoring_rounds = [], []
        for service in (at_decision_points_only, scoring_ahead):
            request_id, metadata = tagged()
            with grpc.insecure_channel(service.address) as channel:
                responses.append(coordinator_pb2_grpc.CoordinatorStub(channel).Generate(
                    request(decision_every_tokens=12, rejection_rate=0.5, return_top=4), timeout=60, metadata=metadata))
            [scoring] = request_lines(tiny_stack.reward.log(), request_id)
            scoring_rounds.append(scoring["rounds"])
    finally:
        scoring_ahead.stop()
        at_decision_points_only.stop()
    alone, ahead = responses
    assert [(c.index, c.text) for c in ahead.ranked] == [(c.index, c.text) for c in alone.ranked]
    assert [c.score for c in ahead.ranked] == pytest.approx([c.score for c in alone.ranked], abs=1e-4)
    assert [(r.token_position, r.kept) for r in ahead.stats.rounds] == \
        [(r.token_position, r.kept) for r in alone.stats.rounds]
    assert [r.cutoff_score for r in ahead.stats.rounds] == pytest.approx([r.cutoff_score for r in alone.stats.rounds],
                                                                          abs=1e-4)
    # The reward model was also sent the text between decision points, and still read each token about once.
    assert scoring_rounds[0] == len(alone.stats.rounds) + 1 < scoring_rounds[1]
    assert alone.stats.scored_tokens <= ahead.stats.scored_tokens <= 1.1 * alone.stats.scored_tokens
