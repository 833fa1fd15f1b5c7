"""How long a refused caller should wait before trying again: about the time the work already
running and waiting ahead of it takes to drain, from how long recent work took. A fixed hint is
wrong both ways: 1 s sends clients back hundreds of times while minute-long requests hold every
place, and makes them wait needlessly when work takes milliseconds."""
import threading

# Recent work counts most: each new duration moves the mean by this share.
_SMOOTHING = 0.2


class RetryHint:
    def __init__(self, initial_seconds: float = 1.0, floor_seconds: float = 0.05, ceiling_seconds: float = 60.0):
        self.floor_seconds, self.ceiling_seconds = floor_seconds, ceiling_seconds
        self.mean_seconds = initial_seconds  # until work has been seen
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """One unit of work (a request, a session) took `seconds` from start to end."""
        with self._lock:
            self.mean_seconds += _SMOOTHING * (seconds - self.mean_seconds)

    def seconds(self, queued: int, running: int, parallel: int) -> float:
        """The hint for a caller with `queued` units of work waiting before it (itself included) and
        `running` being served, `parallel` at once. Work being served has on average half of its
        time left; leaving it out made the hint several times shorter than the wait under a flood."""
        drain = self.mean_seconds * (max(1, queued) + running / 2) / max(1, parallel)
        return min(self.ceiling_seconds, max(self.floor_seconds, drain))
