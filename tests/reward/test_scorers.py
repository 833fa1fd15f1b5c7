"""Reward scorers on tiny random models: values checked against a direct computation."""
import pytest
import torch

from reward_service.scorers import load_scorer

MESSAGES = [{"role": "user", "content": "Name a fruit."}]
RESPONSES = ["An apple.", "Bananas are yellow and sweet, and monkeys like them.", "Pear", ""]


@pytest.fixture(scope="module")
def logprob(tiny_model_dir):
    return load_scorer("lm-logprob", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=16)


def direct_mean_logprob(scorer, response: str, complete: bool) -> float:
    tokenizer, model = scorer.tokenizer, scorer.model
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    body = tokenizer(response, add_special_tokens=False).input_ids + ([tokenizer.eos_token_id] if complete else [])
    logits = model(torch.tensor([prompt + body])).logits[0].log_softmax(-1)
    return sum(logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(body)) / len(body)


def test_logprob_is_the_mean_log_probability_of_the_response(logprob):
    complete = [True, False, True, True]
    scored = logprob.score(MESSAGES, RESPONSES, complete)
    for response, done, value in zip(RESPONSES, complete, scored.scores):
        if response or done:
            assert value == pytest.approx(direct_mean_logprob(logprob, response, done), abs=1e-4)
    assert scored.scores[1] != scored.scores[0]
    # The tiny budget (16 response tokens per batch) forces several batches; the result does not
    # depend on the grouping, and the prompt is read once per batch.
    assert len(scored.batch_sizes) > 1
    prompt = logprob.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    bodies = [len(logprob.tokenizer(r, add_special_tokens=False).input_ids) + d for r, d in zip(RESPONSES, complete)]
    assert scored.tokens == len(prompt) * len(scored.batch_sizes) + sum(bodies)
    alone = [logprob.score(MESSAGES, [r], [d]).scores[0] for r, d in zip(RESPONSES, complete)]
    assert scored.scores == pytest.approx(alone, abs=1e-5)


def test_an_empty_partial_response_scores_zero(logprob):
    assert logprob.score(MESSAGES, [""], [False]).scores == [0.0]


def test_classifier_scores_the_formatted_conversation(tiny_classifier_dir):
    scorer = load_scorer("classifier", str(tiny_classifier_dir), torch.device("cpu"), torch.float32, token_budget=128)
    scored = scorer.score(MESSAGES, RESPONSES[:3], [True] * 3)
    for response, value in zip(RESPONSES[:3], scored.scores):
        text = scorer.tokenizer.apply_chat_template([*MESSAGES, {"role": "assistant", "content": response}],
                                                    tokenize=False)
        ids = scorer.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        assert value == pytest.approx(scorer.model(ids).logits[0, 0].item(), abs=1e-4)
    assert len(set(scored.scores)) == 3


def test_unknown_scorer_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown scorer"):
        load_scorer("magic", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=64)
