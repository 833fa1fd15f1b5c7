"""Admission: the KV-cache budget is one pool shared by every session.

A session is admitted when its reservation (prompt plus every row up to its first decision point)
fits in what is free and fewer than `max_sessions` are decoding; otherwise it waits in a bounded
first-come-first-served queue; beyond `max_queued` waiting it is turned away at once. What a
prune, a compaction or a close frees goes back to the pool and admits whoever waits."""
import collections
import threading
import time

from common import metrics
from common.errors import Overloaded
from common.retry_hint import RetryHint

SERVICE = "generator"


class Admission:
    def __init__(self, budget_tokens: int, max_sessions: int, max_queued: int):
        self.budget_tokens, self.max_sessions, self.max_queued = budget_tokens, max_sessions, max_queued
        self.retry_hint = RetryHint()
        self.free_tokens = budget_tokens
        self.active = 0
        self.running_work = 0  # tokens the admitted sessions may decode, for the retry hint
        self._waiting: collections.deque = collections.deque()
        self._admitted: list = []
        self._lock = threading.Lock()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def enqueue(self, session) -> None:
        """Admit `session` now, queue it, or raise Overloaded when the queue is full."""
        with self._lock:
            if not self._waiting and self._fits(session):
                self._admit(session)
            elif len(self._waiting) >= self.max_queued:
                metrics.ADMISSION_REJECTED.labels(SERVICE).inc()
                raise Overloaded(
                    f"{self.active} sessions decoding and {len(self._waiting)} waiting for KV-cache memory; "
                    f"try again later",
                    retry_after_seconds=self.retry_hint.seconds(
                        queued=sum(map(_work, self._waiting)), running=self.running_work,
                        pieces=len(self._waiting) + self.active, parallel=self.active))
            else:
                self._waiting.append(session)
                metrics.ADMISSION_QUEUED.labels(SERVICE).set(len(self._waiting))

    def take_admitted(self) -> list:
        """Sessions admitted since the last call, oldest first (the queue's head is never overtaken,
        so a large reservation is not starved by small ones)."""
        with self._lock:
            while self._waiting and self._fits(self._waiting[0]):
                self._admit(self._waiting.popleft())
            metrics.ADMISSION_QUEUED.labels(SERVICE).set(len(self._waiting))
            admitted, self._admitted = self._admitted, []
            return admitted

    def shrink(self, session, tokens: int) -> None:
        """Lower an admitted session's reservation to `tokens`, returning the rest to the pool."""
        with self._lock:
            self.free_tokens += session.reservation_tokens - tokens
            session.reservation_tokens = tokens

    def grow(self, session, tokens: int) -> None:
        """Raise an admitted session's reservation to `tokens` from what is free (its branches need
        it), or raise Overloaded."""
        with self._lock:
            extra = tokens - session.reservation_tokens
            if extra > self.free_tokens:
                raise Overloaded(f"fork_from: the branches need {extra} more tokens of KV cache; "
                                 f"{self.free_tokens} are free")
            if extra > 0:
                self.free_tokens -= extra
                session.reservation_tokens = tokens

    def leave(self, session) -> None:
        """A closed session: out of the queue, or its reservation back to the pool."""
        with self._lock:
            if session.admitted:
                session.admitted = False
                self.active -= 1
                self.running_work -= _work(session)
                self.free_tokens += session.reservation_tokens
                self.retry_hint.observe(time.perf_counter() - session.admitted_at, _work(session))
            elif session in self._waiting:
                self._waiting.remove(session)
                metrics.ADMISSION_QUEUED.labels(SERVICE).set(len(self._waiting))
            if session in self._admitted:
                self._admitted.remove(session)

    def _fits(self, session) -> bool:
        return self.active < self.max_sessions and session.reservation_tokens <= self.free_tokens

    def _admit(self, session) -> None:
        self.active += 1
        self.running_work += _work(session)
        self.free_tokens -= session.reservation_tokens
        session.admitted = True
        session.admitted_at = time.perf_counter()
        metrics.ADMISSION_WAIT_SECONDS.labels(SERVICE).observe(session.admitted_at - session.arrived)
        self._admitted.append(session)


def _work(session) -> int:
    """Tokens a session may decode: what its time is proportional to."""
    return session.n * session.max_new_tokens
