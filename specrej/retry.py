"""When a failed call is tried again: UNAVAILABLE and RESOURCE_EXHAUSTED only, after an
exponentially growing, jittered delay, or after exactly the delay the server asks for in
`grpc-retry-pushback-ms` (gRPC's retry design, gRFC A6)."""
import random
from dataclasses import dataclass

import grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
PUSHBACK_KEY = "grpc-retry-pushback-ms"


class _DoNotRetry:
    """The server's pushback said not to retry at all (a negative or unreadable value)."""


DO_NOT_RETRY = _DoNotRetry()


def pushback_seconds(trailing_metadata) -> float | None | _DoNotRetry:
    """The server's requested delay; None when it gave none."""
    for key, value in trailing_metadata or ():
        if key == PUSHBACK_KEY:
            try:
                milliseconds = int(value)
            except ValueError:
                return DO_NOT_RETRY
            return DO_NOT_RETRY if milliseconds < 0 else milliseconds / 1000
    return None


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_seconds: float = 0.5

    def delay(self, error: grpc.RpcError, retries_done: int, seconds_left: float | None) -> float | None:
        """Seconds to wait before trying again after `error`, or None to give up: the code is not
        retryable, the retries are used up, the server said no, or the wait would outlive the deadline."""
        if retries_done >= self.retries or error.code() not in RETRYABLE_CODES:
            return None
        wait = pushback_seconds(error.trailing_metadata())
        if wait is DO_NOT_RETRY:
            return None
        if wait is None:
            # Half to all of the nominal delay, so that clients turned away together come back apart.
            wait = self.backoff_seconds * 2**retries_done * random.uniform(0.5, 1.0)
        if seconds_left is not None and wait >= seconds_left:
            return None
        return wait
