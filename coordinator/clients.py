"""gRPC clients of the generator and reward services, with their failures turned into
ServiceError carrying the status the coordinator should answer with."""
import queue

import grpc

from specrej.v1 import generator_pb2, generator_pb2_grpc, reward_pb2, reward_pb2_grpc

# Headless Kubernetes services resolve to every replica; round robin spreads requests over them,
# and a request's whole session stays on the replica its stream was opened to.
_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _translate(error: grpc.RpcError, service: str, target: str) -> ServiceError:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceError(code, f"the {service} service at {target} is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceError(code, f"the deadline passed while waiting for the {service} service")
    return ServiceError(code, details or f"{service} service failed with {code.name}")


class GeneratorSession:
    """One generator session: a bidirectional stream, one event answering each command."""

    def __init__(self, stub, target: str, timeout: float | None):
        self.target = target
        self._commands: queue.Queue = queue.Queue()
        self._call = stub.Session(iter(self._commands.get, None), timeout=timeout)

    def _send(self, command: generator_pb2.SessionCommand):
        self._commands.put(command)
        try:
            return next(self._call)
        except grpc.RpcError as error:
            raise _translate(error, "generator", self.target) from error
        except StopIteration:
            raise ServiceError(grpc.StatusCode.INTERNAL, "the generator ended the session early") from None

    def start(self, start: generator_pb2.StartSession) -> generator_pb2.SessionStarted:
        return self._send(generator_pb2.SessionCommand(start=start)).started

    def advance(self, until_tokens: int) -> generator_pb2.Advanced:
        return self._send(generator_pb2.SessionCommand(advance=generator_pb2.Advance(until_tokens=until_tokens))).advanced

    def prune(self, keep: list[int]) -> generator_pb2.Pruned:
        return self._send(generator_pb2.SessionCommand(prune=generator_pb2.Prune(keep=keep))).pruned

    def close(self) -> None:
        """End the stream and wait for the generator to free the session."""
        self._commands.put(None)
        try:
            for _ in self._call:
                pass
        except grpc.RpcError:
            pass  # the session is gone either way

    def cancel(self) -> None:
        """Abandon the session at once (the client left); safe from any thread."""
        self._commands.put(None)
        self._call.cancel()


class GeneratorClient:
    def __init__(self, target: str):
        self.target = target
        self.channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.stub = generator_pb2_grpc.GeneratorStub(self.channel)

    def open(self, timeout: float | None) -> GeneratorSession:
        return GeneratorSession(self.stub, self.target, timeout)


class RewardClient:
    def __init__(self, target: str):
        self.target = target
        self.channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.stub = reward_pb2_grpc.RewardStub(self.channel)

    def score(self, request: reward_pb2.ScoreRequest, timeout: float | None) -> reward_pb2.ScoreResponse:
        try:
            return self.stub.Score(request, timeout=timeout)
        except grpc.RpcError as error:
            raise _translate(error, "reward", self.target) from error
