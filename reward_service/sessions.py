"""What is kept between the scoring rounds of one session: the prompt's and each candidate's
keys/values, within a memory budget, until the session is released."""
import threading
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


class SessionCache:
    """Open sessions' states by id, within a memory budget. A session is open from `open` to
    `release`; its state is taken out while a call runs and put back after it. A state put back after
    its session's release, or one that no longer fits the budget, is dropped (that session's next call
    then recomputes from scratch; sessions already held keep their place: a full cache does not churn)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._open: set[str] = set()
        self._held: dict[str, tuple[SessionState, int]] = {}  # state and its bytes when put
        self._lock = threading.Lock()
        self.nbytes = 0

    def __len__(self) -> int:
        """Sessions open."""
        return len(self._open)

    def open(self, session: str) -> None:
        with self._lock:
            self._open.add(session)

    def take(self, session: str) -> SessionState | None:
        with self._lock:
            held = self._held.pop(session, None)
            if held is None:
                return None
            self.nbytes -= held[1]
            return held[0]

    def put(self, session: str, state: SessionState) -> bool:
        """Keep `state` for the session's next call; False when it was dropped."""
        with self._lock:
            if session not in self._open:
                return False
            replaced = self._held.pop(session, None)  # two calls of one session at once: the later one wins
            if replaced is not None:
                self.nbytes -= replaced[1]
            nbytes = state.nbytes
            if self.nbytes + nbytes > self.budget_bytes:
                return False
            self._held[session] = (state, nbytes)
            self.nbytes += nbytes
            return True

    def release(self, session: str) -> int:
        """Close a session and free what it holds; returns the bytes freed. A call of it still running
        keeps nothing when it ends."""
        with self._lock:
            self._open.discard(session)
            held = self._held.pop(session, None)
            if held is None:
                return 0
            self.nbytes -= held[1]
            return held[1]
