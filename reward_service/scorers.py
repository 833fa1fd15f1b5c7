"""Reward scorers: the mean log-probability of the response under a causal LM, and sequence-classifier
reward models. Each scores many responses to one conversation, and several such requests at once.

Scorers over Llama-family models read through `CausalReader`: the prompt once, shared by every
response without copies, and, within a session, only the response tokens added since the previous
call. Other classifiers are recomputed from scratch by their own Hugging Face forward pass."""
from dataclasses import dataclass

import torch

from common.chat import PromptError, conversation_text, prompt_token_ids
from .batching import batches_by_token_budget
from .reader import CausalReader, Piece, SequenceKV, is_readable
from .sessions import CandidateState, SessionCache, SessionState


@dataclass
class Item:
    response: str
    complete: bool = False  # ended on its own: the end-of-turn token is scored too
    candidate: int = 0  # the candidate's index within its session


@dataclass
class Request:
    """One Score call, tokenized: the shared prompt and each response's own tokens after it."""
    prompt: list[int]
    bodies: list[list[int]]
    candidates: list[int]
    session: str = ""


@dataclass
class Scored:
    scores: list[float]
    tokens: int  # tokens the model read for this request
    seconds: float = 0.0  # model time of the batch this request ran in


def common_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def conversation_tokens(tokenizer, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
    """The formatted conversation of each response, split into the prefix they all share (at least
    the last token of each stays its own, since a classifier reads its score there) and the rest."""
    prompt = prompt_token_ids(tokenizer, messages)
    if not items:
        return prompt, []
    try:
        texts = [conversation_text(tokenizer, messages, item.response) for item in items]
    except Exception as error:  # the template's own complaint goes to the caller
        raise PromptError(f"the chat template rejected the conversation: {error}") from error
    ids = tokenizer(texts, add_special_tokens=False).input_ids
    shared = min(min(common_prefix_length(prompt, i) for i in ids), min(len(i) for i in ids) - 1)
    return ids[0][:shared], [i[shared:] for i in ids]


class IncrementalScorer:
    """Reads requests through a `CausalReader` in passes of at most `token_budget` tokens, and keeps
    each session's keys/values in `sessions` between its calls."""

    name = ""

    def __init__(self, model, tokenizer, token_budget: int, head):
        self.model, self.tokenizer, self.token_budget, self.head = model, tokenizer, token_budget, head
        self.reader = CausalReader(model)
        self.device, self.dtype = self.reader.device, self.reader.dtype
        self.max_context = getattr(model.config, "max_position_embeddings", None) or 2048

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        raise NotImplementedError

    def _value(self, prompt: SequenceKV, candidate: CandidateState) -> float:
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, requests: list[Request], sessions: SessionCache | None = None) -> tuple[list[Scored], list[int]]:
        """Scores of each request, and the number of sequences in each forward pass."""
        plans = [self._plan(r, sessions.take(r.session) if sessions is not None and r.session else None)
                 for r in requests]
        prompts = [piece for _, piece, _, _ in plans if piece is not None]
        passes = self._read(prompts) + self._read([p for _, _, pieces, _ in plans for p in pieces])
        results = []
        for request, (state, _, _, tokens) in zip(requests, plans):
            candidates = list(state.candidates.values())
            results.append(Scored([self._value(state.prompt, c) for c in candidates], tokens))
            if sessions is not None and request.session:
                sessions.put(request.session, state)
        return results, passes

    def _plan(self, request: Request, state: SessionState | None):
        """The session's state updated to this request's tokens, with what is left to read: the prompt
        piece (None when cached), the candidates' pieces and the count of tokens they hold."""
        prompt_piece, tokens = None, 0
        if state is None or state.prompt_ids != request.prompt:
            state = SessionState(request.prompt, SequenceKV(self.reader, len(request.prompt)))
            prompt_piece = Piece(state.prompt, request.prompt, len(request.prompt))
            tokens += len(request.prompt)
        previous, state.candidates = state.candidates, {}
        pieces = []
        # Without a session, positions stand in for candidate indices; candidates absent now are dropped.
        keys = request.candidates if request.session else range(len(request.bodies))
        for key, body in zip(keys, request.bodies):
            candidate = previous.get(key)
            if candidate is None:
                candidate = CandidateState(body, SequenceKV(self.reader, max(len(body), 1)))
            else:
                # Tokens up to the first difference keep their keys/values; a text delta may have changed
                # the last token, and everything from there on is read again.
                kept = common_prefix_length(candidate.ids, body)
                candidate.kv.truncate(kept)
                del candidate.token_scores[kept:]
                candidate.ids = body
            if len(body) > candidate.kv.length:
                pieces.append(Piece(candidate.kv, body, len(body) - candidate.kv.length, state.prompt))
                tokens += len(body) - candidate.kv.length
            state.candidates[key] = candidate
        return state, prompt_piece, pieces, tokens

    def _read(self, pieces: list[Piece]) -> list[int]:
        """Read all pieces in passes of at most token_budget tokens; a longer piece is split over passes.
        Returns the number of sequences in each pass."""
        sizes = []
        pieces = [p for p in pieces if p.count > 0]
        while pieces:
            batch, rest, used = [], [], 0
            for piece in pieces:
                take = min(piece.count, self.token_budget - used)
                if take <= 0:
                    rest.append(piece)
                    continue
                batch.append(Piece(piece.kv, piece.ids, take, piece.prefix))
                used += take
                if take < piece.count:
                    rest.append(Piece(piece.kv, piece.ids, piece.count - take, piece.prefix))
            self.reader.read(batch)
            sizes.append(len(batch))
            pieces = rest
        return sizes


class LogprobScorer(IncrementalScorer):
    """Mean log p(response token | prompt, earlier response tokens); a complete response also scores
    the end-of-turn token, so ending well counts. An empty partial response scores 0."""

    name = "lm-logprob"

    def __init__(self, model, tokenizer, token_budget: int):
        super().__init__(model, tokenizer, token_budget, model.get_output_embeddings())
        self.end_id = tokenizer.eos_token_id

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        prompt = prompt_token_ids(self.tokenizer, messages)
        bodies = self.tokenizer([i.response for i in items], add_special_tokens=False).input_ids if items else []
        return prompt, [b + [self.end_id] if item.complete else b for b, item in zip(bodies, items)]

    def _value(self, prompt: SequenceKV, candidate: CandidateState) -> float:
        body, known = candidate.ids, len(candidate.token_scores)
        if known < len(body):
            # Token j is predicted by the hidden state before it: the prompt's last for j = 0.
            before = candidate.kv.hidden[max(known - 1, 0) : len(body) - 1]
            if known == 0:
                before = torch.cat((prompt.hidden[prompt.length - 1 : prompt.length], before))
            logprobs = self.head(before).float().log_softmax(dim=-1)
            targets = torch.tensor(body[known:], device=logprobs.device).unsqueeze(-1)
            candidate.token_scores += logprobs.gather(-1, targets).squeeze(-1).tolist()
        return sum(candidate.token_scores) / len(body) if body else 0.0


class ClassifierScorer(IncrementalScorer):
    """A sequence-classification reward model built on a Llama-family decoder, over the formatted
    conversation; the score is the first logit at the last token, as RM-Mistral, Skywork-Reward and
    ArmoRM's heads define it."""

    name = "classifier"

    def __init__(self, model, tokenizer, token_budget: int):
        super().__init__(model, tokenizer, token_budget, model.score)

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        return conversation_tokens(self.tokenizer, messages, items)

    def _value(self, prompt: SequenceKV, candidate: CandidateState) -> float:
        return self.head(candidate.kv.hidden[candidate.kv.length - 1]).float()[0].item()


class RecomputingClassifierScorer:
    """Any other sequence-classification reward model: each conversation read whole by the model's own
    forward pass, every call."""

    name = ClassifierScorer.name

    def __init__(self, model, tokenizer, token_budget: int):
        self.model, self.tokenizer, self.token_budget = model, tokenizer, token_budget
        self.device, self.dtype = model.device, model.dtype
        self.max_context = getattr(model.config, "max_position_embeddings", None) or 512
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        return conversation_tokens(self.tokenizer, messages, items)

    @torch.inference_mode()
    def score(self, requests: list[Request], sessions: SessionCache | None = None) -> tuple[list[Scored], list[int]]:
        results, passes = [], []
        for request in requests:
            encoded = [request.prompt + body for body in request.bodies]
            scores = [0.0] * len(encoded)
            for batch in batches_by_token_budget([len(e) for e in encoded], self.token_budget):
                passes.append(len(batch))
                padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
                logits = self.model(**{k: v.to(self.device) for k, v in padded.items()}).logits
                for index, value in zip(batch, logits[:, 0].float().tolist()):
                    scores[index] = value
            results.append(Scored(scores, sum(len(e) for e in encoded)))
        return results, passes


def load_scorer(kind: str, path: str, device, dtype, token_budget: int):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == LogprobScorer.name:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        if not is_readable(model):
            raise ValueError(f"the {kind} scorer needs a decoder of type llama, mistral, qwen2 or qwen3 with full "
                             f"attention; {path} is {model.config.model_type!r}")
        return LogprobScorer(model, tokenizer, token_budget)
    if kind == ClassifierScorer.name:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        if is_readable(model) and hasattr(model, "score"):
            return ClassifierScorer(model, tokenizer, token_budget)
        return RecomputingClassifierScorer(model, tokenizer, token_budget)
    raise ValueError(f"unknown scorer {kind!r}; choose {LogprobScorer.name} or {ClassifierScorer.name}")
