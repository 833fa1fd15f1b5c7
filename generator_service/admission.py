"""Bounded concurrency: at most `max_sessions` sessions hold KV-cache memory at once, at most
`max_queued` wait for a place, and the rest are turned away at once."""
import contextlib
import threading

from common.errors import Overloaded


class SessionSlots:
    def __init__(self, max_sessions: int, max_queued: int):
        self.max_sessions, self.max_queued = max_sessions, max_queued
        self._condition = threading.Condition()
        self.active = 0
        self.queued = 0

    @contextlib.contextmanager
    def hold(self, still_wanted):
        """Wait for a place while `still_wanted()` is true; raise Overloaded if the queue is full."""
        with self._condition:
            if self.active >= self.max_sessions and self.queued >= self.max_queued:
                raise Overloaded(f"{self.active} sessions running and {self.queued} waiting; try again later")
            self.queued += 1
            try:
                while self.active >= self.max_sessions:
                    if not still_wanted():
                        raise Overloaded("gave up waiting for a free session")
                    self._condition.wait(timeout=0.1)
            finally:
                self.queued -= 1
            self.active += 1
        try:
            yield
        finally:
            with self._condition:
                self.active -= 1
                self._condition.notify()
