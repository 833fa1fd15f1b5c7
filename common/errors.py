"""The project's one error vocabulary, and its one translation into gRPC statuses.

Engines, planners and validators raise these; only `status_of` (used by the servers' interceptor)
turns them into a gRPC status, so every service answers the same failure the same way."""
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class ServiceError(Exception):
    """A failure with the gRPC status it should be answered with."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def detail_messages(self) -> list:
        """google.rpc detail messages a program can read beside the text."""
        return []

    def trailing_metadata(self) -> tuple:
        return ()


class FieldError(ServiceError):
    """A request field that cannot be served; the message starts with the field's name."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str):
        super().__init__(f"{field}: {description}")
        self.field, self.description = field, description

    def detail_messages(self) -> list:
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.description)
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class Overloaded(ServiceError):
    """No room now; the client may retry after `retry_after_seconds`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_seconds: float = 1.0):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def detail_messages(self) -> list:
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.FromMilliseconds(int(self.retry_after_seconds * 1000))
        return [delay]

    def trailing_metadata(self) -> tuple:
        return ((RETRY_PUSHBACK_KEY, str(int(self.retry_after_seconds * 1000))),)


class Unavailable(ServiceError):
    """A dependency is down, the model is still loading, or the server is draining; retryable."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    """The client went away."""

    code = grpc.StatusCode.CANCELLED


class TokenizerMismatch(ServiceError):
    """Token ids were sent in a tokenizer this service does not use; the caller sends text instead."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, field: str, theirs: str, ours: str):
        super().__init__(f"{field}: token ids in tokenizer {theirs!r}, but this service's tokenizer is {ours!r}; "
                         f"send text instead")
        self.field = field

    def detail_messages(self) -> list:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="TOKENIZER", subject=self.field, description="the token ids' tokenizer is not this service's")
        return [error_details_pb2.PreconditionFailure(violations=[violation])]


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Upstream(ServiceError):
    """A dependency answered with a status the caller should see as is."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple


def status_of(error: ServiceError) -> Status:
    """The gRPC status for `error`, with its details packed as google.rpc.Status (grpc-status-details-bin)."""
    details = []
    for message in error.detail_messages():
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    metadata = tuple(error.trailing_metadata())
    if details:
        rich = rpc_status.to_status(status_pb2.Status(
            code=getattr(code_pb2, error.code.name), message=error.message, details=details))
        metadata += tuple(rich.trailing_metadata)
    return Status(error.code, error.message, metadata)


def field_violations(rpc_error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs from an error's google.rpc.BadRequest details, if any."""
    status = rpc_status.from_call(rpc_error)
    if status is None:
        return []
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations += [(v.field, v.description) for v in request.field_violations]
    return violations
