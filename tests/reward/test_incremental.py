"""Scoring within a session reads only what is new since the session's previous call, and gives the
same scores as reading everything again."""

import pytest

from reward_service.engine import ScoringEngine
from reward_service.scorers import Item, common_prefix_length
from reward_service.sessions import SessionCache
from tests.reward.conftest import MESSAGES, reference_scores

TEXTS = [
    "Apples are crisp and sweet; pears are softer, and plums taste tart when they are fresh from the tree.",
    "A banana. Bananas grow in bunches called hands, and they ripen after they are picked.",
    "Cherries! Small, red, and stone-fruited: they are best eaten by the handful in early summer.",
    "Grapes, which can be eaten fresh, dried into raisins, or pressed and fermented into wine.",
]
# Each round: per candidate, how many characters of its text have been decoded (None = rejected), and
# whether it has ended. Cuts fall mid-word, so a round's last token is often replaced in the next one.
ROUNDS = [
    {0: (7, False), 1: (9, False), 2: (4, False), 3: (11, False)},
    {0: (23, False), 1: (30, False), 2: (26, False), 3: (27, False)},
    {0: (52, False), 2: (49, False), 3: (60, False)},  # candidate 1 was rejected
    {0: (len(TEXTS[0]), True), 2: (71, False), 3: (len(TEXTS[3]), True)},
    {0: (len(TEXTS[0]), True), 2: (len(TEXTS[2]), True), 3: (len(TEXTS[3]), True)},
]


def items_of(round_: dict) -> list[Item]:
    return [Item(TEXTS[c][:chars], done, c) for c, (chars, done) in round_.items()]


@pytest.fixture(params=["logprob", "classifier"])
def scorer(request):
    return request.getfixturevalue(request.param)


def engine_for(scorer, budget: int = 1 << 30) -> ScoringEngine:
    return ScoringEngine(scorer, sessions=SessionCache(budget), batch_window_seconds=0)


def new_tokens(scorer, previous: dict, items: list[Item]) -> tuple[int, dict]:
    """Tokens not read before in this session, and each candidate's tokens now."""
    prompt, bodies = scorer.tokenize(MESSAGES, items)
    now = {item.candidate: body for item, body in zip(items, bodies)}
    fresh = sum(len(body) - common_prefix_length(previous.get(c, []), body) for c, body in now.items())
    return fresh, now


def test_incremental_scores_equal_full_recomputation_and_read_only_new_tokens(scorer):
    engine = engine_for(scorer)
    try:
        session = engine.open_session()
        previous, prompt_tokens = {}, len(scorer.tokenize(MESSAGES, items_of(ROUNDS[0]))[0])
        for number, round_ in enumerate(ROUNDS):
            items = items_of(round_)
            scored = engine.submit(MESSAGES, items, session=session).result()
            full = engine.submit(MESSAGES, items).result()
            expected = reference_scores(scorer, MESSAGES, [i.response for i in items], [i.complete for i in items])
            assert scored.scores == pytest.approx(expected, abs=1e-4)
            assert full.scores == pytest.approx(expected, abs=1e-4)
            fresh, previous = new_tokens(scorer, previous, items)
            assert scored.tokens == fresh + (prompt_tokens if number == 0 else 0)
            if number:
                assert scored.tokens < full.tokens / 2
    finally:
        engine.close()


def test_one_new_token_per_candidate_scores_like_recomputation(scorer):
    """Decision points one token apart: every candidate brings a single new token to read."""
    engine = engine_for(scorer)
    try:
        session = engine.open_session()
        prompt, bodies = scorer.tokenize(MESSAGES, [Item(text, False, c) for c, text in enumerate(TEXTS[:2])])
        for length in range(3, 7):
            items = [Item(scorer.tokenizer.decode(body[:length]), False, c) for c, body in enumerate(bodies)]
            scored = engine.submit(MESSAGES, items, session=session).result()
            expected = reference_scores(scorer, MESSAGES, [i.response for i in items], [False] * len(items))
            assert scored.scores == pytest.approx(expected, abs=1e-4)
    finally:
        engine.close()


def test_a_rejected_candidate_is_forgotten(logprob):
    engine = engine_for(logprob)
    try:
        session = engine.open_session()
        both = [Item("Plums are purple.", False, 0), Item("Kiwis are green.", False, 1)]
        engine.submit(MESSAGES, both, session=session).result()
        held = engine.sessions.nbytes
        engine.submit(MESSAGES, both[:1], session=session).result()
        assert engine.sessions.nbytes < held
        # Back again, it is read from its start.
        again = engine.submit(MESSAGES, both, session=session).result()
        assert again.tokens == len(logprob.tokenize(MESSAGES, both[1:])[1][0])
    finally:
        engine.close()


def test_release_frees_the_session_and_a_released_session_keeps_nothing(logprob):
    engine = engine_for(logprob)
    try:
        session, items = engine.open_session(), [Item("Plums are purple.", False, 0)]
        first = engine.submit(MESSAGES, items, session=session).result()
        assert engine.sessions.nbytes > 0 and len(engine.sessions) == 1
        assert engine.release(session) > 0
        assert engine.sessions.nbytes == 0 and len(engine.sessions) == 0 and engine.release(session) == 0
        assert engine.submit(MESSAGES, items, session=session).result().tokens == first.tokens
        assert engine.sessions.nbytes == 0
    finally:
        engine.close()


def test_beyond_the_cache_budget_calls_are_recomputed_with_the_same_scores(logprob):
    engine = engine_for(logprob, budget=1000)
    try:
        session = engine.open_session()
        for round_ in ROUNDS[:3]:
            items = items_of(round_)
            scored = engine.submit(MESSAGES, items, session=session).result()
            full = engine.submit(MESSAGES, items).result()
            assert scored.tokens == full.tokens
            assert scored.scores == pytest.approx(full.scores, abs=1e-5)
        assert engine.sessions.nbytes == 0
    finally:
        engine.close()


def test_sessions_do_not_mix(logprob):
    engine = engine_for(logprob)
    try:
        a, b = engine.open_session(), engine.open_session()
        engine.submit(MESSAGES, [Item("Plums are purple.", False, 0)], session=a).result()
        other = [{"role": "user", "content": "Name a colour."}]
        scored = engine.submit(other, [Item("Plums are purple.", False, 0)], session=b).result()
        assert scored.scores == pytest.approx(reference_scores(logprob, other, ["Plums are purple."], [False]),
                                              abs=1e-4)
        # A session whose conversation changes starts over rather than reusing another prompt's keys.
        changed = engine.submit(other, [Item("Plums are purple.", False, 0)], session=a).result()
        assert changed.tokens == scored.tokens and changed.scores == pytest.approx(scored.scores, abs=1e-5)
    finally:
        engine.close()
