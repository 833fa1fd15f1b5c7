"""The session cache's bookkeeping: budget, and a release that comes while a call runs."""
from reward_service.reader import SequenceKV
from reward_service.sessions import CandidateState, SessionCache, SessionState


def state(logprob, tokens: int) -> SessionState:
    prompt = SequenceKV(logprob.reader, tokens)
    return SessionState(list(range(tokens)), prompt, {0: CandidateState([1], SequenceKV(logprob.reader, 1))})


def test_a_session_that_does_not_fit_is_dropped_and_the_others_stay(logprob):
    small, large = state(logprob, 4), state(logprob, 400)
    cache = SessionCache(small.nbytes + large.nbytes // 2)
    cache.open("a")
    cache.open("b")
    assert cache.put("a", small)
    assert not cache.put("b", large)
    assert cache.take("a") is small and cache.take("b") is None


def test_a_release_during_a_call_is_not_undone_when_the_call_ends(logprob):
    cache = SessionCache(1 << 30)
    cache.open("s")
    cache.put("s", state(logprob, 4))
    taken = cache.take("s")
    assert cache.release("s") == 0  # nothing held right now: the call has it
    assert not cache.put("s", taken)
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_session_never_opened_keeps_nothing(logprob):
    cache = SessionCache(1 << 30)
    assert not cache.put("unknown", state(logprob, 4))
    assert cache.nbytes == 0 and cache.take("unknown") is None
