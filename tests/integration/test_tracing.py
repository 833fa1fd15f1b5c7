"""Tracing: an in-process coordinator server, instrumented as --otlp-endpoint instruments it, in
front of the real generator and reward services; spans go to memory instead of a collector."""
import asyncio

import grpc
import pytest
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
from opentelemetry.trace import SpanKind

from common.server import Server, ServerOptions
from common.tracing import instrument_grpc
from coordinator.admission import Admission
from coordinator.clients import GeneratorClient, RewardClient
from coordinator.request import Limits
from coordinator.servicer import CoordinatorServicer
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc


@pytest.fixture
def instrumented():
    instrument_grpc()
    yield
    GrpcAioInstrumentorServer().uninstrument()
    GrpcAioInstrumentorClient().uninstrument()


async def generate_in_process(stack, request: pb.GenerateRequest) -> pb.GenerateResponse:
    server = Server("coordinator", [pb.DESCRIPTOR.services_by_name["Coordinator"].full_name],
                    ServerOptions(host="127.0.0.1", port=0, metrics_port=0))
    generator, reward = GeneratorClient(stack.generator.address), RewardClient(stack.reward.address)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(generator, reward, Admission(4, 4, "coordinator"), Limits(), default_timeout=60),
        server.grpc)
    await server.start()
    await server.mark_serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            return await coordinator_pb2_grpc.CoordinatorStub(channel).Generate(request, timeout=60)
    finally:
        await server.grpc.stop(0)
        await generator.close()
        await reward.close()


def test_a_request_span_holds_one_span_per_decision_point(tiny_stack, span_exporter, instrumented):
    response = asyncio.run(generate_in_process(tiny_stack, pb.GenerateRequest(
        prompt="Describe a lighthouse.", n=8, max_new_tokens=24, seed=5, decision_every_tokens=8)))
    spans = span_exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    [request] = [s for s in spans if s.name == "request"]
    assert by_id[request.parent.span_id].kind == SpanKind.SERVER  # inside the gRPC call's own span

    def children(span, name):
        return [s for s in spans if s.name == name and s.parent and s.parent.span_id == span.context.span_id]

    decision_points = children(request, "decision point")
    assert len(decision_points) == len(response.stats.rounds) >= 2
    assert [s.attributes["specrej.position"] for s in decision_points] == [
        r.token_position for r in response.stats.rounds]
    # Each decision point scored once; the rounds go over one traced client stream to the reward
    # service, opened by the first of them.
    scores = [score for decision_point in decision_points for score in children(decision_point, "score")]
    assert len(scores) == len(decision_points)
    [stream] = [s for s in spans if s.kind == SpanKind.CLIENT and s.name.endswith("/ScoreSession")]
    assert stream.parent.span_id == scores[0].context.span_id
    assert len(children(request, "score")) == 1  # the final ranking
