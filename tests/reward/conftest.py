"""Scorers on the tiny random models, and an independent reference: the Hugging Face model's own
forward pass over each whole sequence."""
import pytest
import torch

from reward_service.scorers import load_scorer

MESSAGES = [{"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="session")
def logprob(tiny_model_dir):
    return load_scorer("lm-logprob", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=64)


@pytest.fixture(scope="session")
def classifier(tiny_classifier_dir):
    return load_scorer("classifier", str(tiny_classifier_dir), torch.device("cpu"), torch.float32, token_budget=64)


@torch.inference_mode()
def reference_mean_logprob(scorer, messages, response: str | list[int], complete: bool) -> float:
    """Of a response given as text, or as token ids (read as they are)."""
    tokenizer, model = scorer.tokenizer, scorer.model
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).input_ids
    ids = response if isinstance(response, list) else tokenizer(response, add_special_tokens=False).input_ids
    body = ids + ([tokenizer.eos_token_id] if complete else [])
    if not body:
        return 0.0
    logits = model(torch.tensor([prompt + body])).logits[0].log_softmax(-1)
    return sum(logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(body)) / len(body)


@torch.inference_mode()
def reference_classifier_score(scorer, messages, response: str) -> float:
    text = scorer.tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}],
                                                tokenize=False)
    ids = scorer.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return scorer.model(ids).logits[0, 0].item()


def reference_scores(scorer, messages, responses, complete) -> list[float]:
    if scorer.name == "classifier":
        return [reference_classifier_score(scorer, messages, r) for r in responses]
    return [reference_mean_logprob(scorer, messages, r, c) for r, c in zip(responses, complete)]
