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
        batch_sizes = []
        for batch in batches_by_token_budget([len(b) for b in bodies], self.token_budget):
            batch = [i for i in batch if bodies[i]]
            if not batch:
                continue
            batch_sizes.append(len(batch))
            for index, value in zip(batch, self._mean_logprobs(prompt, [bodies[i] for i in batch])):
                scores[index] = value
        return Scored(scores, len(prompt) * len(batch_sizes) + sum(len(b) for b in bodies), batch_sizes)

    def _mean_logprobs(self, prompt: list[int], bodies: list[list[int]]) -> list[float]:
        """The prompt is run once and its keys/values shared by every response in the batch, so a
        long prompt costs once per batch, not once per response."""
        decoder, head = self.model.base_model, self.model.get_output_embeddings()
        prefix = decoder(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        # The prompt's last position predicts every response's first token.
        first = head(prefix.last_hidden_state[0, -1]).float().log_softmax(dim=-1)
        totals = [first[body[0]].item() for body in bodies]
        # Each response's tokens but its last are inputs; their outputs predict the tokens after them.
        width = max(len(b) for b in bodies) - 1
        if width > 0:
            inputs = torch.full((len(bodies), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(bodies), len(prompt) + width), dtype=torch.long)
            mask[:, : len(prompt)] = 1
            for row, body in enumerate(bodies):
                inputs[row, : len(body) - 1] = torch.tensor(body[:-1])
                mask[row, len(prompt) : len(prompt) + len(body) - 1] = 1
            cache = prefix.past_key_values
            cache.batch_repeat_interleave(len(bodies))
            hidden = decoder(input_ids=inputs.to(self.device), attention_mask=mask.to(self.device),
                             past_key_values=cache).last_hidden_state
            for row, body in enumerate(bodies):
                if len(body) > 1:
                    logprobs = head(hidden[row, : len(body) - 1]).float().log_softmax(dim=-1)
                    target = torch.tensor(body[1:], device=logprobs.device).unsqueeze(-1)
                    totals[row] += logprobs.gather(-1, target).sum().item()
        return [total / len(body) for total, body in zip(totals, bodies)]


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
