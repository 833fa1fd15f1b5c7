"""How long a refused caller should wait before trying again: about the time the work already
running and waiting ahead of it takes to drain, from how long recent work took. A fixed hint is
wrong both ways: 1 s sends clients back hundreds of times while minute-long requests hold every
place, and makes them wait needlessly when work takes milliseconds.

Work is counted in a size its callers choose (tokens to decode or score), and recent work gives the
seconds per unit of size: under a flood of mixed requests the small ones finish first, so a mean
over requests would be several times too short for the large ones still waiting."""
import threading

# Recent work counts most: each new rate moves the mean by this share.
_SMOOTHING = 0.2


class RetryHint:
    def __init__(self, initial_seconds: float = 1.0, floor_seconds: float = 0.05, ceiling_seconds: float = 60.0):
        self.floor_seconds, self.ceiling_seconds = floor_seconds, ceiling_seconds
        self.seconds_per_unit = initial_seconds  # until work has been seen
        self._mean_seconds = self._mean_size = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float, size: float = 1.0) -> None:
        """One piece of work of `size` units (a request, a session) took `seconds` from start to end."""
        with self._lock:
            share = _SMOOTHING if self._mean_size else 1.0
            self._mean_seconds += share * (seconds - self._mean_seconds)
            self._mean_size += share * (size - self._mean_size)
            # A ratio of means, not a mean of ratios: small work's fixed costs (prefill, scoring
            # calls) would otherwise price every unit of the large work behind it.
            self.seconds_per_unit = self._mean_seconds / max(self._mean_size, 1e-9)

    def seconds(self, queued: float, running: float, pieces: int, parallel: int) -> float:
        """The hint for a caller with `queued` units of work waiting before it and `running` units
        being served, in `pieces` pieces of which `parallel` are served at once. Work being served has
        on average half of it left; and pieces do not split, so the one that starts last runs its
        whole length while the other servers have run dry: about a mean piece more."""
        parallel = max(1, parallel)
        last_piece = (queued + running) / max(1, pieces) * (1 - 1 / parallel)
        drain = self.seconds_per_unit * ((queued + running / 2) / parallel + last_piece)
        return min(self.ceiling_seconds, max(self.floor_seconds, drain))
