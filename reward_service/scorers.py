"""Reward scorers: the mean log-probability of the response under a causal LM, and any sequence
classifier reward model. Both take one conversation and many responses to it."""
from dataclasses import dataclass

import torch

from common.chat import conversation_text, prompt_token_ids
from .batching import batches_by_token_budget


@dataclass
class Scored:
    scores: list[float]
    tokens: int  # tokens the model read, padding excluded
    batch_sizes: list[int]


class LogprobScorer:
    """Mean log p(response token | prompt, earlier response tokens); a complete response also
    scores the end-of-turn token, so ending well counts."""

    name = "lm-logprob"

    def __init__(self, model, tokenizer, token_budget: int):
        self.model, self.tokenizer, self.token_budget = model, tokenizer, token_budget
        self.device = model.device
        self.end_id = tokenizer.eos_token_id

    @torch.inference_mode()
    def score(self, messages: list[dict], responses: list[str], complete: list[bool]) -> Scored:
        prompt = prompt_token_ids(self.tokenizer, messages)
        bodies = self.tokenizer(responses, add_special_tokens=False).input_ids if responses else []
        bodies = [b + [self.end_id] if done else b for b, done in zip(bodies, complete)]
        scores = [0.0] * len(bodies)  # an empty partial response has nothing to score
        lengths = [len(prompt) + len(b) for b in bodies]
        batch_sizes = []
        for batch in batches_by_token_budget(lengths, self.token_budget):
            batch = [i for i in batch if bodies[i]]
            if not batch:
                continue
            batch_sizes.append(len(batch))
            for index, value in zip(batch, self._mean_logprobs(prompt, [bodies[i] for i in batch])):
                scores[index] = value
        return Scored(scores, sum(lengths), batch_sizes)

    def _mean_logprobs(self, prompt: list[int], bodies: list[list[int]]) -> list[float]:
        width = len(prompt) + max(len(b) for b in bodies)
        ids = torch.full((len(bodies), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(bodies), width), dtype=torch.long)
        for row, body in enumerate(bodies):
            sequence = prompt + body
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        hidden = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        head = self.model.get_output_embeddings()
        means = []
        for row, body in enumerate(bodies):
            # Positions len(prompt)-1 .. predict the response tokens; only those go through the LM head.
            states = hidden[row, len(prompt) - 1 : len(prompt) - 1 + len(body)]
            logprobs = head(states).float().log_softmax(dim=-1)
            target = torch.tensor(body, device=logprobs.device).unsqueeze(-1)
            means.append(logprobs.gather(-1, target).mean().item())
        return means


class ClassifierScorer:
    """A sequence-classification reward model over the formatted conversation; the score is the
    first logit of the last token, as RM-Mistral, Skywork-Reward and ArmoRM's heads define it."""

    name = "classifier"

    def __init__(self, model, tokenizer, token_budget: int):
        self.model, self.tokenizer, self.token_budget = model, tokenizer, token_budget
        self.device = model.device
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, messages: list[dict], responses: list[str], complete: list[bool]) -> Scored:
        texts = [conversation_text(self.tokenizer, messages, r) for r in responses]
        encoded = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        scores = [0.0] * len(texts)
        batch_sizes = []
        for batch in batches_by_token_budget([len(e) for e in encoded], self.token_budget):
            batch_sizes.append(len(batch))
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            logits = self.model(**{k: v.to(self.device) for k, v in padded.items()}).logits
            for index, value in zip(batch, logits[:, 0].float().tolist()):
                scores[index] = value
        return Scored(scores, sum(len(e) for e in encoded), batch_sizes)


def load_scorer(kind: str, path: str, device, dtype, token_budget: int):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == LogprobScorer.name:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        return LogprobScorer(model, tokenizer, token_budget)
    if kind == ClassifierScorer.name:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        return ClassifierScorer(model, tokenizer, token_budget)
    raise ValueError(f"unknown scorer {kind!r}; choose {LogprobScorer.name} or {ClassifierScorer.name}")
