"""specrej.Client: call the Speculative Rejection service from Python.

    with specrej.Client("coordinator:50050", token=token, timeout=60) as client:
        best = client.generate("Give three tips for staying healthy.", n=32, max_new_tokens=128).best
"""
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import NoReturn

import grpc

from specrej import fleet
from specrej.errors import ServiceError, request_id_of
from specrej.retry import RetryPolicy
from specrej.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

PemSource = str | os.PathLike | bytes

_COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name


def _read_pem(source: PemSource | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as file:
        return file.read()


def open_channel(target: str, *, tls_ca: PemSource | None = None, tls_cert: PemSource | None = None,
                 tls_key: PemSource | None = None) -> grpc.Channel:
    """A TLS channel when a CA or a client certificate is given (the CA defaults to the system's
    roots), else a plaintext one. When `target` names several coordinator replicas (dns:/// of a
    headless Service), calls go round robin over those whose health says SERVING (specrej.fleet);
    Client retries UNAVAILABLE itself, on the next replica."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key: give both (a client certificate and its key) or neither")
    options = fleet.channel_options(_COORDINATOR_SERVICE, retry=False)
    if tls_ca is None and tls_cert is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls_ca), private_key=_read_pem(tls_key), certificate_chain=_read_pem(tls_cert)
    )
    return grpc.secure_channel(target, credentials, options=options)


def _message(turn: common_pb2.Message | Mapping[str, str]) -> common_pb2.Message:
    return turn if isinstance(turn, common_pb2.Message) else common_pb2.Message(**turn)


def build_request(prompt: str | None = None, *, messages: Iterable | None = None, n: int | None = None,
                  method: int | str | None = None, **fields) -> coordinator_pb2.GenerateRequest:
    """A GenerateRequest; `method` is a Method value or its name ("BEST_OF_N"), `messages` holds
    Message objects or {"role": ..., "content": ...} dicts, and every other GenerateRequest field
    (max_new_tokens, rejection_rate, seed, ...) goes by its own name. Fields left None stay unset."""
    if (prompt is None) == (messages is None):
        raise ValueError("prompt and messages: give exactly one")
    if isinstance(method, str):
        method = coordinator_pb2.Method.Value(method)
    given = {name: value for name, value in dict(n=n, method=method, **fields).items() if value is not None}
    if messages is not None:
        given["messages"] = [_message(turn) for turn in messages]
    return coordinator_pb2.GenerateRequest(prompt=prompt or "", **given)


class Client:
    """A connection to the coordinator (the public API).

    `timeout` is each call's deadline in seconds, retries included (None: no deadline). Calls that
    fail with UNAVAILABLE or RESOURCE_EXHAUSTED are tried again up to `retries` times, after
    `backoff_seconds`, then twice that, and so on, or after the delay the server asks for. Failures
    raise ServiceError. `token` is sent as `authorization: Bearer <token>`. Safe to share between
    threads; `last_request_id` is per thread."""

    def __init__(self, target: str, *, tls_ca: PemSource | None = None, tls_cert: PemSource | None = None,
                 tls_key: PemSource | None = None, token: str | None = None, timeout: float | None = None,
                 retries: int = 3, backoff_seconds: float = 0.5):
        self._channel = open_channel(target, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._retry = RetryPolicy(retries=retries, backoff_seconds=backoff_seconds)
        self._calls = threading.local()

    @property
    def last_request_id(self) -> str | None:
        """The server's id (trailing metadata `x-request-id`) of this thread's last finished call."""
        return getattr(self._calls, "request_id", None)

    def generate(self, prompt: str | None = None, *, messages: Iterable | None = None, n: int | None = None,
                 method: int | str | None = None, timeout: float | None = None,
                 **fields) -> coordinator_pb2.GenerateResponse:
        """The best response (and `ranked`, `stats`); see build_request for the arguments.
        `timeout` overrides the client's deadline for this call."""
        request = build_request(prompt, messages=messages, n=n, method=method, **fields)
        deadline = self._deadline(timeout)
        retries_done = 0
        while True:
            try:
                response, call = self._stub.Generate.with_call(
                    request, timeout=self._seconds_left(deadline), metadata=self._metadata)
            except grpc.RpcError as error:
                self._wait_or_raise(error, retries_done, deadline)
                retries_done += 1
                continue
            self._calls.request_id = request_id_of(call)
            return response

    def stream(self, prompt: str | None = None, *, messages: Iterable | None = None, n: int | None = None,
               method: int | str | None = None, timeout: float | None = None,
               **fields) -> Iterator[coordinator_pb2.GenerateEvent]:
        """GenerateEvents: a `round` after each decision point, then the `result`. A call is tried
        again only before its first event. Leaving the loop early cancels the request on the server."""
        request = build_request(prompt, messages=messages, n=n, method=method, **fields)
        return self._stream_events(request, self._deadline(timeout))

    def _stream_events(self, request, deadline) -> Iterator[coordinator_pb2.GenerateEvent]:
        retries_done = 0
        while True:
            call = self._stub.GenerateStream(request, timeout=self._seconds_left(deadline), metadata=self._metadata)
            received = False
            try:
                for event in call:
                    received = True
                    yield event
            except grpc.RpcError as error:
                if received:
                    self._raise(error)
                self._wait_or_raise(error, retries_done, deadline)
                retries_done += 1
                continue
            finally:
                call.cancel()
            self._calls.request_id = request_id_of(call)
            return

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self._timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _seconds_left(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def _wait_or_raise(self, error: grpc.RpcError, retries_done: int, deadline: float | None) -> None:
        wait = self._retry.delay(error, retries_done, self._seconds_left(deadline))
        if wait is None:
            self._raise(error)
        time.sleep(wait)

    def _raise(self, error: grpc.RpcError) -> NoReturn:
        failure = ServiceError.from_rpc_error(error)
        self._calls.request_id = failure.request_id
        raise failure from error

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
