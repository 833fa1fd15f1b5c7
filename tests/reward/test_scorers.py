"""Reward scorers on tiny random models: values checked against the Hugging Face model's own forward pass."""
import pytest
import torch

from reward_service.scorers import Item, Request, load_scorer
from tests.reward.conftest import MESSAGES, reference_scores

RESPONSES = ["An apple.", "Bananas are yellow and sweet, and monkeys like them.", "Pear", ""]


def request(scorer, responses, complete, messages=MESSAGES) -> Request:
    items = [Item(r, c, i) for i, (r, c) in enumerate(zip(responses, complete))]
    prompt, bodies = scorer.tokenize(messages, items)
    return Request(prompt, bodies, [i.candidate for i in items])


def test_logprob_is_the_mean_log_probability_of_the_response(logprob):
    complete = [True, False, True, True]
    (scored,), passes = logprob.score([request(logprob, RESPONSES, complete)])
    assert scored.scores == pytest.approx(reference_scores(logprob, MESSAGES, RESPONSES, complete), abs=1e-4)
    assert scored.scores[1] != scored.scores[0]
    # The prompt is read once, however many responses share it.
    prompt = logprob.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True).input_ids
    bodies = [len(logprob.tokenizer(r, add_special_tokens=False).input_ids) + d for r, d in zip(RESPONSES, complete)]
    assert scored.tokens == len(prompt) + sum(bodies)


def test_the_token_budget_splits_passes_without_changing_scores(tiny_model_dir, logprob):
    small = load_scorer("lm-logprob", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=5)
    complete = [True, False, True, True]
    (scored,), passes = small.score([request(small, RESPONSES, complete)])
    assert max(passes) <= 5 and len(passes) > 3
    assert scored.scores == pytest.approx(reference_scores(logprob, MESSAGES, RESPONSES, complete), abs=1e-4)


def test_requests_with_different_prompts_run_together(logprob):
    other = [{"role": "user", "content": "Say something about the sea, please."}]
    first, second = request(logprob, RESPONSES[:2], [True, False]), request(logprob, ["Waves.", "Blue"], [False, True],
                                                                             messages=other)
    (a, b), _ = logprob.score([first, second])
    assert a.scores == pytest.approx(reference_scores(logprob, MESSAGES, RESPONSES[:2], [True, False]), abs=1e-4)
    assert b.scores == pytest.approx(reference_scores(logprob, other, ["Waves.", "Blue"], [False, True]), abs=1e-4)


def test_an_empty_partial_response_scores_zero(logprob):
    (scored,), _ = logprob.score([request(logprob, [""], [False])])
    assert scored.scores == [0.0]


def test_classifier_scores_the_formatted_conversation(classifier):
    (scored,), _ = classifier.score([request(classifier, RESPONSES[:3], [True] * 3)])
    assert scored.scores == pytest.approx(reference_scores(classifier, MESSAGES, RESPONSES[:3], None), abs=1e-4)
    assert len(set(scored.scores)) == 3


def test_unknown_scorer_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown scorer"):
        load_scorer("magic", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=64)
