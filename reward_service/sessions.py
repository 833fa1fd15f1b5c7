"""What is kept between the Score calls of one session: the prompt's and each candidate's keys/values,
within a memory budget, until Release or an idle timeout."""
import threading
import time
from dataclasses import dataclass, field

from .reader import SequenceKV


@dataclass
class CandidateState:
    ids: list[int]  # the tokens whose keys/values `kv` holds
    kv: SequenceKV
    token_scores: list[float] = field(default_factory=list)  # per-token values, for scorers that average them


@dataclass
class SessionState:
    prompt_ids: list[int]
    prompt: SequenceKV
    candidates: dict[int, CandidateState] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.prompt.nbytes + sum(c.kv.nbytes for c in self.candidates.values())


@dataclass
class _Held:
    state: SessionState
    nbytes: int
    last_used: float


class SessionCache:
    """Sessions' states by id. A state is taken out while its call runs and put back after it; one
    that no longer fits the budget is dropped, and that session's next call recomputes from scratch
    (sessions already held keep their place: a full cache does not churn)."""

    def __init__(self, budget_bytes: int, ttl_seconds: float, clock=time.monotonic):
        self.budget_bytes, self.ttl_seconds, self._clock = budget_bytes, ttl_seconds, clock
        self._held: dict[str, _Held] = {}
        self._in_use: set[str] = set()
        self._released_in_use: set[str] = set()
        self._lock = threading.Lock()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def take(self, session: str) -> SessionState | None:
        with self._lock:
            self._in_use.add(session)
            held = self._held.pop(session, None)
            if held is None:
                return None
            self.nbytes -= held.nbytes
            return held.state

    def put(self, session: str, state: SessionState) -> bool:
        """Keep `state` for the session's next call; False when it was dropped (over budget, or released
        while its call ran)."""
        with self._lock:
            self._in_use.discard(session)
            if session in self._released_in_use:
                self._released_in_use.discard(session)
                return False
            replaced = self._held.pop(session, None)  # two calls of one session at once: the later one wins
            if replaced is not None:
                self.nbytes -= replaced.nbytes
            nbytes = state.nbytes
            if self.nbytes + nbytes > self.budget_bytes:
                return False
            self._held[session] = _Held(state, nbytes, self._clock())
            self.nbytes += nbytes
            return True

    def abandon(self, session: str) -> None:
        """A taken state that will not be put back (its call failed)."""
        with self._lock:
            self._in_use.discard(session)
            self._released_in_use.discard(session)

    def release(self, session: str) -> int:
        """Free a session now; returns the bytes freed."""
        with self._lock:
            if session in self._in_use:
                self._released_in_use.add(session)
            held = self._held.pop(session, None)
            if held is None:
                return 0
            self.nbytes -= held.nbytes
            return held.nbytes

    def expire(self) -> int:
        """Free sessions idle longer than the TTL (their Release never came); returns how many."""
        with self._lock:
            cutoff = self._clock() - self.ttl_seconds
            stale = [s for s, held in self._held.items() if held.last_used < cutoff]
            for session in stale:
                self.nbytes -= self._held.pop(session).nbytes
            return len(stale)
