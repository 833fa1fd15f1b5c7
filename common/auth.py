"""Bearer-token authentication for a grpc.aio server: calls must carry `authorization: Bearer <token>`
with a token from a file (one per line), re-read when the file changes, so tokens rotate without a
restart. Health checks need none (probes carry no token)."""
import hmac
import logging
import os

import grpc

from . import errors
from .interceptor import with_behavior

log = logging.getLogger(__name__)

_EXEMPT_PREFIXES = ("/grpc.health.",)
_SCHEME = "bearer "


class TokenFile:
    """The tokens in a file: one per line; blank lines and lines starting with # are ignored."""

    def __init__(self, path: str):
        self.path = path
        self._mtime: int | None = None
        self._tokens: tuple[bytes, ...] = ()
        self.tokens()
        if not self._tokens:
            raise SystemExit(f"{path}: no tokens (one per line)")

    def tokens(self) -> tuple[bytes, ...]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self._mtime:
                with open(self.path, encoding="utf-8") as handle:
                    lines = [line.strip() for line in handle]
                self._tokens = tuple(t.encode() for t in lines if t and not t.startswith("#"))
                self._mtime = mtime
                log.info("read %d bearer tokens from %s", len(self._tokens), self.path)
        except OSError as error:  # being rewritten: keep the tokens we have
            log.warning("cannot read the token file, keeping the current tokens: %s", error)
        return self._tokens

    def allows(self, authorization: str) -> bool:
        if not authorization[: len(_SCHEME)].lower() == _SCHEME:
            return False
        offered = authorization[len(_SCHEME):].strip().encode()
        # Compare with every token in constant time, so timing says nothing about which one nearly matched.
        return any([hmac.compare_digest(offered, token) for token in self.tokens()])


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers calls without a valid token with UNAUTHENTICATED. Goes after
    common.interceptor.ServingInterceptor, which counts, logs and turns the refusal into a status."""

    def __init__(self, tokens: TokenFile):
        self.tokens = tokens

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_EXEMPT_PREFIXES):
            return handler
        authorization = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = str(value)
        if self.tokens.allows(authorization):
            return handler
        return with_behavior(handler, _refuse_unary, _refuse_stream)


def _refusal() -> errors.Unauthenticated:
    return errors.Unauthenticated("authorization: a valid `Bearer <token>` is required")


def _refuse_unary(behavior):
    async def refuse(request, context):
        raise _refusal()
    return refuse


def _refuse_stream(behavior):
    async def refuse(request, context):
        raise _refusal()
        yield  # makes this an async generator, as streaming behaviors are
    return refuse
