"""A unary Score of many responses: whole responses packed into dense passes over one reading of the
prompt, equal to each response scored alone by the Hugging Face model; a request abandoned between
passes stops there."""
import pytest
import torch

from reward_service.scorers import Item, Request, load_scorer
from tests.reward.conftest import MESSAGES, reference_scores

WORDS = "apples pears figs grow on trees in warm places and taste sweet when ripe".split()
# Lengths from one word to a few dozen, so passes hold several responses, and one longer than a pass.
RESPONSES = [" ".join(WORDS[(3 * n) % len(WORDS):] + WORDS[: (5 * n) % 11]) * (1 + n % 3) for n in range(17)]
RESPONSES.append(" ".join(WORDS * 6))


def request(scorer, responses, complete, abandoned=lambda: False) -> Request:
    items = [Item(r, c, i) for i, (r, c) in enumerate(zip(responses, complete))]
    prompt, bodies = scorer.tokenize(MESSAGES, items)
    return Request(prompt, bodies, [i.candidate for i in items], abandoned=abandoned)


@pytest.mark.parametrize("kind", ["lm-logprob", "classifier"])
def test_many_responses_packed_into_few_passes_score_as_each_alone(kind, tiny_model_dir, tiny_classifier_dir):
    folder = tiny_model_dir if kind == "lm-logprob" else tiny_classifier_dir
    scorer = load_scorer(kind, str(folder), torch.device("cpu"), torch.float32, token_budget=64)
    complete = [n % 2 == 0 for n in range(len(RESPONSES))]
    unary = request(scorer, RESPONSES, complete)
    assert max(len(b) for b in unary.bodies) > 64  # the longest is split over passes of its own
    (scored,), passes = scorer.score([unary])
    assert scored.scores == pytest.approx(reference_scores(scorer, MESSAGES, RESPONSES, complete), abs=1e-4)
    # The prompt once, each response's tokens once, and passes that hold several whole responses.
    assert scored.tokens == len(unary.prompt) + sum(len(b) for b in unary.bodies)
    assert max(passes[1:]) > 2
    assert len(passes) < len(RESPONSES)


def test_a_request_abandoned_between_passes_stops_and_the_others_are_scored(logprob):
    asked = []

    def abandoned_after_two_passes() -> bool:
        asked.append(True)
        return len(asked) > 2

    complete = [True] * len(RESPONSES)
    dropped = request(logprob, RESPONSES, complete, abandoned_after_two_passes)
    kept = request(logprob, RESPONSES[:3], complete[:3])
    (gone, scored), passes = logprob.score([dropped, kept])
    assert gone is None
    assert scored.scores == pytest.approx(reference_scores(logprob, MESSAGES, RESPONSES[:3], complete[:3]), abs=1e-4)
    _, whole = logprob.score([request(logprob, RESPONSES, complete), request(logprob, RESPONSES[:3], complete[:3])])
    # Most of the abandoned request's responses were never read.
    assert sum(passes) < sum(whole) - len(RESPONSES) / 2
