"""grpc.aio clients of the generator and reward services. Their failures become common.errors with
public messages that name the service, never its address (addresses go to the log)."""
import asyncio
import contextlib
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import errors
from common.tls import ChannelTls, ReloadingChannel
from specrej import fleet
from specrej.v1 import generator_pb2, generator_pb2_grpc, reward_pb2, reward_pb2_grpc

log = logging.getLogger(__name__)

# Streams one scoring round may open: the request's own, and new ones after a replica was lost.
_STREAM_ATTEMPTS = 3

# Headless Kubernetes services resolve to every replica; round robin spreads requests over the
# healthy ones (specrej.fleet), and a request's whole session stays on the replica its stream was
# opened to.
_MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
# How long a health check of a channel that is not connected may take before the service counts as
# down. A refused connection fails at once whatever this is; it bounds only a service that does not
# answer, and is long enough that a busy but healthy service is not taken for a dead one.
PROBE_SECONDS = 2.0


def translate(error: grpc.aio.AioRpcError, service: str, target: str) -> errors.ServiceError:
    """The error the coordinator answers with when `service` failed with `error`."""
    code, details = error.code(), error.details() or ""
    log.warning("the %s service at %s answered %s: %s", service, target, code.name, details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.Unavailable(f"the {service} service is unavailable")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"the deadline passed while waiting for the {service} service")
    if code == grpc.StatusCode.CANCELLED:
        return errors.Cancelled(f"the call to the {service} service was cancelled")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        pushback = dict(error.trailing_metadata() or ()).get(errors.RETRY_PUSHBACK_KEY)
        return errors.Overloaded(details, retry_after_seconds=int(pushback) / 1000 if pushback else 1.0)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = errors.field_violations(error)
        if violations:
            return errors.FieldError(*violations[0])
        return errors.Upstream(code, details)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return errors.Upstream(code, f"the {service} service failed; see its log")
    return errors.Upstream(code, details or f"the {service} service failed with {code.name}")


# What grpc.aio reports, as an INTERNAL status, for a message it could not send because the stream
# had already ended: it replaces the status the stream ended with, which is lost.
_UNSENT_DETAILS = "Internal error from Core"


def _ended_before_sending(call: grpc.aio.StreamStreamCall, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """How a stream most likely ended when a write found it ended unread: at its deadline if that
    has passed, else with its replica (stopped, restarted, its connection dropped)."""
    remaining = call.time_remaining()
    if remaining is not None and remaining <= 0:
        code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "the stream's deadline passed"
    else:
        code, details = grpc.StatusCode.UNAVAILABLE, "the stream ended before its next message was sent"
    return grpc.aio.AioRpcError(code, error.initial_metadata(), error.trailing_metadata(), details,
                                error.debug_error_string())


async def write_then_read(call: grpc.aio.StreamStreamCall, messages: list, ended_early: str):
    """Write `messages` on a bidirectional stream, then read its answer to them. A stream that ended
    between two messages (its deadline, an upstream failure) takes no more writes: reading says how it
    ended (AioRpcError); an answer-less end is an INTERNAL error with the `ended_early` message."""
    try:
        for message in messages:
            await call.write(message)
    except asyncio.InvalidStateError:
        pass
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INTERNAL and error.details() == _UNSENT_DETAILS:
            raise _ended_before_sending(call, error) from None
        raise
    answer = await call.read()
    if answer is grpc.aio.EOF:
        raise errors.Upstream(grpc.StatusCode.INTERNAL, ended_early)
    return answer


class _Upstream:
    """A channel to one service's replicas (over TLS when given, following its certificate files),
    its stub and its health stub. `stub` and `health` belong to the channel new calls go over."""

    service = ""  # the name public messages use
    service_name = ""  # the gRPC service its health check asks about
    stub_class = None  # the service's generated stub

    def __init__(self, target: str, tls: ChannelTls | None = None):
        self.target = target
        self._channels = ReloadingChannel(target, tls, [*_MESSAGE_OPTIONS, *fleet.channel_options(self.service_name)],
                                          service="coordinator")
        self._stubs = (None, None, None)

    def _current(self) -> tuple:
        """(channel, stub, health stub) for a new call."""
        channel = self._channels.current()
        if channel is not self._stubs[0]:
            self._stubs = (channel, self.stub_class(channel), health_pb2_grpc.HealthStub(channel))
        return self._stubs

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._current()[0]

    @property
    def stub(self):
        return self._current()[1]

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return self._current()[2]

    def _error(self, error: grpc.aio.AioRpcError) -> errors.ServiceError:
        return translate(error, self.service, self.target)

    async def check_reachable(self) -> None:
        """Raise Unavailable unless the service answers, quickly: a connected channel counts as up,
        otherwise a health check must say SERVING within PROBE_SECONDS."""
        if self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        try:
            response = await self.health.Check(health_pb2.HealthCheckRequest(service=self.service_name),
                                               timeout=PROBE_SECONDS)
        except grpc.aio.AioRpcError as error:
            log.warning("the %s service at %s is not reachable: %s %s", self.service, self.target,
                        error.code().name, error.details())
            raise errors.Unavailable(f"the {self.service} service is unavailable") from None
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            log.warning("the %s service at %s is %s", self.service, self.target,
                        health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
            raise errors.Unavailable(f"the {self.service} service is not serving yet")

    async def close(self) -> None:
        await self._channels.close()


class GeneratorSession:
    """One generator session: a bidirectional stream, one event answering each command. Implements
    coordinator.pipeline.GeneratorPort."""

    def __init__(self, client: "GeneratorClient", timeout: float | None, metadata: tuple):
        self._client = client
        self._call = client.stub.Session(timeout=timeout, metadata=metadata)

    async def _send(self, command: generator_pb2.SessionCommand) -> generator_pb2.SessionEvent:
        try:
            return await write_then_read(self._call, [command], "the generator ended the session early")
        except grpc.aio.AioRpcError as error:
            raise self._client._error(error) from None

    async def start(self, start: generator_pb2.StartSession) -> generator_pb2.SessionStarted:
        return (await self._send(generator_pb2.SessionCommand(start=start))).started

    async def advance(self, until_tokens: int, keep: list[int], fork_from: list[int]) -> generator_pb2.Advanced:
        command = generator_pb2.SessionCommand(advance=generator_pb2.Advance(until_tokens=until_tokens, keep=keep,
                                                                             fork_from=fork_from))
        return (await self._send(command)).advanced

    async def close(self) -> None:
        """End the stream and wait for the generator to free the session."""
        try:
            await self._call.done_writing()
            while await self._call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass  # the session is gone either way

    def cancel(self) -> None:
        """Abandon the session at once: the generator frees it."""
        self._call.cancel()


class GeneratorClient(_Upstream):
    service = "generator"
    service_name = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name
    stub_class = generator_pb2_grpc.GeneratorStub

    def __init__(self, target: str, tls: ChannelTls | None = None):
        super().__init__(target, tls)
        self._context_tokens: int | None = None

    @contextlib.asynccontextmanager
    async def session(self, timeout: float | None, metadata: tuple = ()):
        """A session that is closed when the block ends and cancelled when it fails or is
        cancelled (the client left, the deadline passed): either way the generator frees it."""
        session = GeneratorSession(self, timeout, metadata)
        try:
            yield session
        except BaseException:
            session.cancel()
            raise
        await session.close()

    async def context_tokens(self) -> int | None:
        """The generator model's context length, once it has answered; None while it is unknown."""
        if self._context_tokens is None:
            try:
                info = await self.stub.Info(generator_pb2.InfoRequest(), timeout=PROBE_SECONDS)
                self._context_tokens = info.max_context_tokens or None
            except grpc.aio.AioRpcError:
                return None
        return self._context_tokens


class RewardCalls:
    """The reward service for one request: one ScoreSession stream, opened at the first score, so the
    request's rounds all reach one replica, which keeps the candidates' responses and keys/values;
    each round sends only what each candidate gained since the previous one: token ids when the
    reward model's tokenizer is the one the request's ids are in (its Info says so), else text. When
    the stream's replica is lost (UNAVAILABLE), a new stream, on another replica, is sent the whole
    responses, at most _STREAM_ATTEMPTS streams per round, within the request's deadline; one that
    refuses the ids (FAILED_PRECONDITION: another tokenizer) is sent text. Implements
    coordinator.pipeline.RewardPort; leaving the `async with` ends the stream, which frees all it held."""

    def __init__(self, client: "RewardClient", deadline: float | None, metadata: tuple):
        self._client, self._deadline, self._metadata = client, deadline, metadata
        self._call: grpc.aio.StreamStreamCall | None = None
        self._by_token_ids = False  # whether the current stream is sent token ids rather than text
        self._ids_refused = False
        # Each candidate's response (text or token ids) as the current stream holds it.
        self._sent: dict[int, str | list[int]] = {}
        self._rounds = asyncio.Lock()  # a stream answers its rounds in order, one at a time

    async def _outgoing(self, request: reward_pb2.ScoreRequest) -> list[reward_pb2.ScoreSessionRequest]:
        """This round's messages, after a `start` when the stream is new (which opens it)."""
        opening = []
        if self._call is None:
            self._by_token_ids = (bool(request.tokenizer) and not self._ids_refused
                                  and request.tokenizer == await self._client.tokenizer())
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            self._call = self._client.stub.ScoreSession(timeout=timeout, metadata=self._metadata)
            self._sent = {}
            opening = [reward_pb2.ScoreSessionRequest(start=reward_pb2.ScoreSessionStart(
                messages=request.messages, tokenizer=request.tokenizer if self._by_token_ids else ""))]
        deltas = []
        for item in request.items:
            if self._by_token_ids:
                sent = self._sent.get(item.candidate, [])
                if item.token_ids[:len(sent)] != sent:
                    raise ValueError(f"candidate {item.candidate}'s tokens do not extend the tokens scored before")
                deltas.append(reward_pb2.ScoreDelta(candidate=item.candidate, token_ids=item.token_ids[len(sent):],
                                                    complete=item.complete))
                continue
            sent = self._sent.get(item.candidate, "")
            if not item.response.startswith(sent):
                raise ValueError(f"candidate {item.candidate}'s text does not extend the text scored before")
            deltas.append(reward_pb2.ScoreDelta(candidate=item.candidate, text_delta=item.response[len(sent):],
                                                complete=item.complete))
        return [*opening, reward_pb2.ScoreSessionRequest(round=reward_pb2.ScoreRound(items=deltas))]

    def _abandon(self) -> None:
        """Cancel the stream, if any: its replica frees what it held, and the next round opens a new one."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def score(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
        """Scores of `request`'s items, whose texts extend those of the previous call; a candidate
        missing from it is dropped for the rest of the request."""
        async with self._rounds:
            attempt = 1
            while True:
                try:
                    outgoing = await self._outgoing(request)  # first: it opens the stream when there is none
                    response = await write_then_read(self._call, outgoing,
                                                     "the reward service ended the scoring stream early")
                except grpc.aio.AioRpcError as error:
                    self._abandon()
                    if error.code() == grpc.StatusCode.FAILED_PRECONDITION and self._by_token_ids:
                        log.info("the reward replica refused token ids (%s); sending text", error.details())
                        self._ids_refused = True
                        self._client.forget_tokenizer()
                        continue
                    if error.code() == grpc.StatusCode.UNAVAILABLE and attempt < _STREAM_ATTEMPTS:
                        attempt += 1
                        log.info("the reward stream's replica was lost (%s); scoring again on a new stream",
                                 error.details())
                        continue
                    raise self._client._error(error) from None
                except BaseException:
                    self._abandon()
                    raise
                self._sent = {item.candidate: list(item.token_ids) if self._by_token_ids else item.response
                              for item in request.items}
                return response

    async def __aenter__(self) -> "RewardCalls":
        return self

    async def __aexit__(self, kind, error, traceback) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        if kind is not None:
            call.cancel()
            return
        try:
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass  # the stream is over either way
        except BaseException:
            call.cancel()
            raise


class RewardClient(_Upstream):
    service = "reward"
    service_name = reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name
    stub_class = reward_pb2_grpc.RewardStub

    def __init__(self, target: str, tls: ChannelTls | None = None):
        super().__init__(target, tls)
        self._tokenizer: str | None = None

    async def tokenizer(self) -> str:
        """The fingerprint of the reward model's tokenizer, once it has answered; "" while unknown."""
        if self._tokenizer is None:
            try:
                info = await self.stub.Info(reward_pb2.RewardInfoRequest(), timeout=PROBE_SECONDS)
            except grpc.aio.AioRpcError:
                return ""
            self._tokenizer = info.tokenizer
        return self._tokenizer

    def forget_tokenizer(self) -> None:
        """Ask again at the next request: a replica had another tokenizer (a fleet mid-upgrade)."""
        self._tokenizer = None

    def for_request(self, timeout: float | None, metadata: tuple = ()) -> RewardCalls:
        return RewardCalls(self, None if timeout is None else time.monotonic() + timeout, metadata)
