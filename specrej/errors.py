"""ServiceError: a failed call as the caller sees it, with the server's request id and the bad
fields the server named (google.rpc.BadRequest in the status details)."""
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

REQUEST_ID_KEY = "x-request-id"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ServiceError(Exception):
    """A call that ended with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str | None = None,
                 field_violations: tuple[FieldViolation, ...] = ()):
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field_violations = tuple(field_violations)
        # The constructor's own arguments, so that the error pickles (e.g. out of a process pool).
        super().__init__(code, message, request_id, self.field_violations)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        return f"{text} (request id {self.request_id})" if self.request_id else text

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "ServiceError":
        """`error` is the grpc.RpcError a stub raised, which is also the finished call."""
        return cls(error.code(), error.details() or "", request_id=request_id_of(error),
                   field_violations=field_violations_of(error))


def request_id_of(call: grpc.Call) -> str | None:
    """The id the server gave the call: trailing metadata, else initial metadata."""
    for metadata in (call.trailing_metadata(), call.initial_metadata()):
        for key, value in metadata or ():
            if key == REQUEST_ID_KEY:
                return value
    return None


def field_violations_of(call: grpc.Call) -> tuple[FieldViolation, ...]:
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # Details that disagree with the call's own code or message are not trusted.
        return ()
    violations = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
    return tuple(violations)
