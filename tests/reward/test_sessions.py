"""The session cache's bookkeeping: budget, idle timeout, and a Release that comes while a call runs."""
from reward_service.reader import SequenceKV
from reward_service.sessions import CandidateState, SessionCache, SessionState


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(logprob, tokens: int) -> SessionState:
    prompt = SequenceKV(logprob.reader, tokens)
    return SessionState(list(range(tokens)), prompt, {0: CandidateState([1], SequenceKV(logprob.reader, 1))})


def test_a_session_that_does_not_fit_is_dropped_and_the_others_stay(logprob):
    small, large = state(logprob, 4), state(logprob, 400)
    cache = SessionCache(small.nbytes + large.nbytes // 2, 60)
    assert cache.put("a", small)
    assert not cache.put("b", large)
    assert cache.take("a") is small and cache.take("b") is None


def test_idle_sessions_expire_and_a_used_one_stays(logprob):
    clock = Clock()
    cache = SessionCache(1 << 30, ttl_seconds=10, clock=clock)
    cache.put("idle", state(logprob, 4))
    clock.now = 6
    cache.put("busy", state(logprob, 4))
    clock.now = 12
    assert cache.expire() == 1
    assert cache.take("idle") is None and cache.take("busy") is not None


def test_a_release_during_a_call_is_not_undone_when_the_call_ends(logprob):
    cache = SessionCache(1 << 30, 60)
    cache.put("s", state(logprob, 4))
    taken = cache.take("s")
    assert cache.release("s") == 0  # nothing held right now: the call has it
    assert not cache.put("s", taken)
    assert len(cache) == 0 and cache.nbytes == 0
    assert cache.put("s", taken)  # a later call of a reused id is kept again
