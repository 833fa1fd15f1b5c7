"""A real gRPC server of the public API (specrej.v1.Coordinator) in this process, that answers each
call with the next scripted outcome and records what it received: what the client's retries,
metadata and errors are tested against."""
import collections
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_status import rpc_status

from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc

ROUND = pb.Round(token_position=8, active_before=4, kept=2, rejected=2, trigger="interval")


def response_to(request: pb.GenerateRequest) -> pb.GenerateResponse:
    best = pb.Candidate(index=0, text=f"answer to {request.prompt}", finish_reason="stop")
    return pb.GenerateResponse(best=best, ranked=[best], stats=pb.Stats(initial_n=request.n, rounds=[ROUND]))


@dataclass(frozen=True)
class Outcome:
    """OK (code None) or a failure; `after_round` fails a stream after its first event."""
    code: grpc.StatusCode | None = None
    message: str = ""
    trailing_metadata: tuple = ()
    field_violations: tuple = ()
    after_round: bool = False
    # A stream that is OK sends its first round, then waits this long before the result.
    stall_seconds: float = 0.0


OK = Outcome()


@dataclass
class ReceivedCall:
    at: float
    request: pb.GenerateRequest
    metadata: dict
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


class ScriptedCoordinator(coordinator_pb2_grpc.CoordinatorServicer):
    """Plays `outcomes` in order, one per call; the last one repeats."""

    def __init__(self, outcomes=(OK,)):
        self.outcomes = list(outcomes)
        self.calls: list[ReceivedCall] = []
        self._lock = threading.Lock()

    def _receive(self, request, context) -> tuple[Outcome, tuple]:
        with self._lock:
            call = ReceivedCall(time.monotonic(), request, dict(context.invocation_metadata()))
            self.calls.append(call)
            outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
            request_id = (("x-request-id", f"request-{len(self.calls)}"),)
        context.add_callback(call.cancelled.set)
        return outcome, request_id

    @staticmethod
    def _fail(outcome: Outcome, request_id: tuple, context):
        status = status_pb2.Status(code=outcome.code.value[0], message=outcome.message)
        if outcome.field_violations:
            bad_request = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=name, description=text)
                for name, text in outcome.field_violations])
            status.details.add().Pack(bad_request)
        details = rpc_status.to_status(status).trailing_metadata if outcome.field_violations else ()
        context.abort_with_status(
            _Status(outcome.code, outcome.message, outcome.trailing_metadata + request_id + details))

    def Generate(self, request, context):
        outcome, request_id = self._receive(request, context)
        if outcome.code is not None:
            self._fail(outcome, request_id, context)
        context.set_trailing_metadata(request_id)
        return response_to(request)

    def GenerateStream(self, request, context):
        outcome, request_id = self._receive(request, context)
        if outcome.code is not None and not outcome.after_round:
            self._fail(outcome, request_id, context)
        yield pb.GenerateEvent(round=ROUND)
        if outcome.code is not None:
            self._fail(outcome, request_id, context)
        deadline = time.monotonic() + outcome.stall_seconds
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        context.set_trailing_metadata(request_id)
        yield pb.GenerateEvent(result=response_to(request))


def serve(servicer: ScriptedCoordinator, server_credentials=None, health=None) -> tuple[grpc.Server, int]:
    """Start a server on a free loopback port; plaintext unless credentials are given; with `health`
    (a grpc_health HealthServicer) beside it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = "127.0.0.1:0"
    port = (server.add_secure_port(address, server_credentials) if server_credentials
            else server.add_insecure_port(address))
    server.start()
    return server, port
