"""Reward scorers: the mean log-probability of the response under a causal LM, sequence-classifier
reward models, and a chat model asked whether the response is good. Each scores many responses to one
conversation, and several such requests at once. `SCORERS` names them.

Scorers over Llama-family models read through `CausalReader`: the prompt once, shared by every
response without copies, and, within a session, only the response tokens added since the previous
call (the judge also the question that follows the response). Other classifiers are recomputed from
scratch by their own Hugging Face forward pass."""
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.chat import PromptError, conversation_text, prompt_token_ids
from .batching import batches_by_token_budget
from .judge_template import JudgeTemplate, plain_conversation
from .reader import CausalReader, Piece, SequenceKV, is_readable
from .sessions import CandidateState, SessionCache, SessionState


@dataclass
class Item:
    response: str
    complete: bool = False  # ended on its own: the end-of-turn token is scored too
    candidate: int = 0  # the candidate's index within its session
    token_ids: list[int] | None = None  # the response as the scorer's token ids, when not as text


@dataclass
class Request:
    """One Score call, tokenized: the shared prompt and each response's own tokens after it."""
    prompt: list[int]
    bodies: list[list[int]]
    candidates: list[int]
    session: str = ""
    # Asked between forward passes: once True, the rest of the request's work is dropped.
    abandoned: Callable[[], bool] = lambda: False


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


def last_hidden(candidates: list[CandidateState]) -> torch.Tensor:
    """The final hidden state of each candidate's last token read, [candidate, hidden_size]."""
    return torch.stack([c.kv.hidden[c.kv.length - 1] for c in candidates])


class IncrementalScorer:
    """Reads requests through a `CausalReader` in passes of at most `token_budget` tokens, and keeps
    each session's keys/values in `sessions` between its calls."""

    name = ""
    # False: the scorer formats the response as text, so token ids sent in are decoded to text first.
    reads_token_ids = False
    # Tokens read after every response at every call, whose keys/values are not kept: they follow the
    # response, so each call's new response tokens come before them.
    tail: tuple[int, ...] = ()

    def __init__(self, model, tokenizer, token_budget: int, head):
        self.model, self.tokenizer, self.token_budget, self.head = model, tokenizer, token_budget, head
        self.reader = CausalReader(model)
        self.device, self.dtype = self.reader.device, self.reader.dtype
        self.max_context = getattr(model.config, "max_position_embeddings", None) or 2048

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        raise NotImplementedError

    def _values(self, prompt: SequenceKV, candidates: list[CandidateState]) -> list[float]:
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, requests: list[Request],
              sessions: SessionCache | None = None) -> tuple[list[Scored | None], list[int]]:
        """Scores of each request (None for one abandoned before its end, whose session state is then
        dropped), and the number of sequences in each forward pass."""
        plans = [self._plan(r, sessions.take(r.session) if sessions is not None and r.session else None)
                 for r in requests]
        abandoned: set[int] = set()
        # Every prompt is read before the responses that attend to it.
        prompts = [(number, piece) for number, (_, piece, _, _) in enumerate(plans) if piece is not None]
        responses = [(number, p) for number, (_, _, pieces, _) in enumerate(plans) for p in pieces]
        passes = self._read(prompts, requests, abandoned) + self._read(responses, requests, abandoned)
        results = []
        for number, (request, (state, _, _, tokens)) in enumerate(zip(requests, plans)):
            if number in abandoned:
                results.append(None)
                continue
            candidates = list(state.candidates.values())
            results.append(Scored(self._values(state.prompt, candidates) if candidates else [], tokens))
            for candidate in candidates:
                candidate.kv.truncate(len(candidate.ids))
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
            read = body + list(self.tail)
            candidate = previous.get(key)
            if candidate is None:
                # Outside a session a response's keys/values serve only its own pass, unless it is too
                # long for one.
                keys_values = bool(request.session) or len(read) > self.token_budget
                candidate = CandidateState(body, SequenceKV(self.reader, max(len(read), 1), keys_values))
            else:
                # Tokens up to the first difference keep their keys/values; a text delta may have changed
                # the last token, and everything from there on is read again.
                kept = common_prefix_length(candidate.ids, body)
                candidate.kv.truncate(kept)
                del candidate.token_scores[kept:]
                candidate.ids = body
            if len(read) > candidate.kv.length:
                pieces.append(Piece(candidate.kv, read, len(read) - candidate.kv.length, state.prompt))
                tokens += len(read) - candidate.kv.length
            state.candidates[key] = candidate
        return state, prompt_piece, pieces, tokens

    def _read(self, pieces: list[tuple[int, Piece]], requests: list[Request], abandoned: set[int]) -> list[int]:
        """Read the pieces, each tagged with its request's number, in passes of at most token_budget
        tokens: whole pieces, packed without padding in their order; a piece longer than a pass is
        split over passes of its own. Before each pass, the pieces of requests abandoned by then
        are dropped (their numbers join `abandoned`). Returns the number of sequences in each pass."""
        sizes = []
        pieces = [(owner, p) for owner, p in pieces if p.count > 0]
        while pieces:
            abandoned.update(owner for owner in {owner for owner, _ in pieces} if requests[owner].abandoned())
            batch, rest, used = [], [], 0
            for owner, piece in pieces:
                if owner in abandoned:
                    continue
                if used and used + piece.count > self.token_budget:
                    rest.append((owner, piece))
                    continue
                take = min(piece.count, self.token_budget)
                batch.append(Piece(piece.kv, piece.ids, take, piece.prefix))
                used += take
                if take < piece.count:
                    rest.append((owner, Piece(piece.kv, piece.ids, piece.count - take, piece.prefix)))
            if batch:
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

    # The response's tokens are read as they are, so token ids sent in are scored exactly as generated.
    reads_token_ids = True

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        prompt = prompt_token_ids(self.tokenizer, messages)
        texts = [i.response for i in items if i.token_ids is None]
        tokenized = iter(self.tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
        bodies = [list(i.token_ids) if i.token_ids is not None else next(tokenized) for i in items]
        return prompt, [b + [self.end_id] if item.complete else b for b, item in zip(bodies, items)]

    # Rows per product with the output head: all responses' tokens together, in pieces small enough
    # that their logits ([rows, vocabulary]) stay a modest temporary.
    head_rows = 512

    def _values(self, prompt: SequenceKV, candidates: list[CandidateState]) -> list[float]:
        befores, targets, unscored = [], [], []
        for candidate in candidates:
            body, known = candidate.ids, len(candidate.token_scores)
            if known < len(body):
                # Token j is predicted by the hidden state before it: the prompt's last for j = 0.
                before = candidate.kv.hidden[max(known - 1, 0) : len(body) - 1]
                if known == 0:
                    before = torch.cat((prompt.hidden[prompt.length - 1 : prompt.length], before))
                befores.append(before)
                targets += body[known:]
                unscored.append(candidate)
        if unscored:
            hidden, targets = torch.cat(befores), torch.tensor(targets, device=self.device)
            logprobs = []
            for start in range(0, len(targets), self.head_rows):
                logits = self.head(hidden[start : start + self.head_rows]).float()
                chosen = logits.gather(-1, targets[start : start + self.head_rows, None])[:, 0]
                logprobs.append(chosen - logits.logsumexp(dim=-1))
            logprobs = torch.cat(logprobs).tolist()
            for candidate in unscored:
                new = len(candidate.ids) - len(candidate.token_scores)
                candidate.token_scores += logprobs[:new]
                del logprobs[:new]
        return [sum(c.token_scores) / len(c.ids) if c.ids else 0.0 for c in candidates]


class ClassifierScorer(IncrementalScorer):
    """A sequence-classification reward model built on a Llama-family decoder, over the formatted
    conversation; the score is the first logit at the last token, as RM-Mistral, Skywork-Reward and
    ArmoRM's heads define it."""

    name = "classifier"

    def __init__(self, model, tokenizer, token_budget: int):
        super().__init__(model, tokenizer, token_budget, model.score)

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        return conversation_tokens(self.tokenizer, messages, items)

    def _values(self, prompt: SequenceKV, candidates: list[CandidateState]) -> list[float]:
        return self.head(last_hidden(candidates)).float()[:, 0].tolist()


class RecomputingClassifierScorer:
    """Any other sequence-classification reward model: each conversation read whole by the model's own
    forward pass, every call."""

    name = ClassifierScorer.name
    reads_token_ids = False

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
    def score(self, requests: list[Request],
              sessions: SessionCache | None = None) -> tuple[list[Scored | None], list[int]]:
        results, passes = [], []
        for request in requests:
            encoded = [request.prompt + body for body in request.bodies]
            scores = [0.0] * len(encoded)
            for batch in batches_by_token_budget([len(e) for e in encoded], self.token_budget):
                if request.abandoned():
                    results.append(None)
                    break
                passes.append(len(batch))
                padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
                logits = self.model(**{k: v.to(self.device) for k, v in padded.items()}).logits
                for index, value in zip(batch, logits[:, 0].float().tolist()):
                    scores[index] = value
            else:
                results.append(Scored(scores, sum(len(e) for e in encoded)))
        return results, passes


class JudgeScorer(IncrementalScorer):
    """A chat model is asked whether the response is good; the score is log P(yes) - log P(no) for the
    first token of its answer. The question is the template, filled in, as the user's turn of the
    model's chat template, with the assistant's turn opened after it.

    That text is read as [everything before the response] [the response] [everything after it]: the
    first is the session's prompt, read once; the response's keys/values are kept between calls; the
    rest, the same for every response, is the tail, read again after each response at each call.
    The response is tokenized on its own, after the whitespace that precedes it in the template (a
    byte-level BPE splits tokens there as it would in the whole text), and judged without trailing
    whitespace, which would merge with whitespace that follows it. So with whitespace or a new line
    after {response}, as in the default template, the tokens are those of the whole text for every
    response that is not empty. `complete` changes nothing: the judge reads the text as it stands."""

    name = "judge"
    answers = ("Yes", "No")
    _RESPONSE = "\x00response\x00"  # stands for the response while the chat template lays the text out

    def __init__(self, model, tokenizer, token_budget: int, template: JudgeTemplate):
        super().__init__(model, tokenizer, token_budget, model.get_output_embeddings())
        self.template = template
        _, after = self._question_around_response([{"role": "user", "content": "..."}])
        lead_in, (self.yes, self.no) = self._answer_tokens()
        self.tail = tuple(tokenizer(after + lead_in, add_special_tokens=False).input_ids)
        self.max_context -= len(self.tail)

    def _question_around_response(self, messages: list[dict]) -> tuple[str, str]:
        """The judge's whole input as text, split where the response goes."""
        question = self.template.format(plain_conversation(messages), self._RESPONSE)
        try:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                      add_generation_prompt=True, tokenize=False)
        except Exception as error:  # the template's own complaint goes to the caller
            raise PromptError(f"the judge's chat template rejected the question: {error}") from error
        # The conversation comes before the response, so the last mark is the response's own.
        before, mark, after = text.rpartition(self._RESPONSE)
        if not mark:
            raise PromptError("the judge's chat template does not keep the question's text as it is")
        return before, after

    def _answer_tokens(self) -> tuple[str, tuple[int, int]]:
        """The token each answer starts with as the assistant's turn opens with it (for SmolLM2's
        template, "Yes" and "No" without a leading space, after "<|im_start|>assistant\\n"), and any text
        the template puts into the assistant's turn before either answer (such as an empty thinking
        block), which then ends the question."""
        question = [{"role": "user", "content": "?"}]
        opened = self.tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
        turns = [self.tokenizer.apply_chat_template([*question, {"role": "assistant", "content": answer}],
                                                    tokenize=False) for answer in self.answers]
        # A template that lays a finished turn out otherwise than it opens one: the answers' bare text.
        turns = [t[len(opened):] if t.startswith(opened) else a for t, a in zip(turns, self.answers)]
        lead_in = os.path.commonprefix(turns)
        yes, no = (self.tokenizer(t[len(lead_in):], add_special_tokens=False).input_ids[0] for t in turns)
        if yes == no:
            raise ValueError("the chat template leaves no token that tells the judge's Yes from its No")
        return lead_in, (yes, no)

    def tokenize(self, messages: list[dict], items: list[Item]) -> tuple[list[int], list[list[int]]]:
        before, _ = self._question_around_response(messages)
        stem = before.rstrip()
        prompt = self.tokenizer(stem, add_special_tokens=False).input_ids
        responses = [before[len(stem):] + i.response.rstrip() for i in items]
        bodies = self.tokenizer(responses, add_special_tokens=False).input_ids if items else []
        return prompt, bodies

    def _values(self, prompt: SequenceKV, candidates: list[CandidateState]) -> list[float]:
        # The log-softmax's normaliser is the same for both answers: their logits' difference is the score.
        logits = self.head(last_hidden(candidates)).float()
        return (logits[:, self.yes] - logits[:, self.no]).tolist()


@dataclass(frozen=True)
class ScorerSettings:
    path: str
    device: torch.device
    dtype: torch.dtype
    token_budget: int
    judge_template: JudgeTemplate


def _readable_causal_lm(settings: ScorerSettings, kind: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(settings.path, dtype=settings.dtype).to(settings.device).eval()
    if not is_readable(model):
        raise ValueError(f"the {kind} scorer needs a decoder of type llama, mistral, qwen2 or qwen3 with full "
                         f"attention; {settings.path} is {model.config.model_type!r}")
    return model


def _load_logprob(settings: ScorerSettings, tokenizer) -> LogprobScorer:
    return LogprobScorer(_readable_causal_lm(settings, LogprobScorer.name), tokenizer, settings.token_budget)


def _load_classifier(settings: ScorerSettings, tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(settings.path, dtype=settings.dtype)
    model = model.to(settings.device).eval()
    if is_readable(model) and hasattr(model, "score"):
        return ClassifierScorer(model, tokenizer, settings.token_budget)
    return RecomputingClassifierScorer(model, tokenizer, settings.token_budget)


def _load_judge(settings: ScorerSettings, tokenizer) -> JudgeScorer:
    if not tokenizer.chat_template:
        raise ValueError(f"the {JudgeScorer.name} scorer needs a chat model; {settings.path} has no chat template")
    return JudgeScorer(_readable_causal_lm(settings, JudgeScorer.name), tokenizer, settings.token_budget,
                       settings.judge_template)


SCORERS = {LogprobScorer.name: _load_logprob, ClassifierScorer.name: _load_classifier, JudgeScorer.name: _load_judge}


def load_scorer(kind: str, path: str, device, dtype, token_budget: int, judge_template: JudgeTemplate | None = None):
    """The scorer named `kind` over the model at `path`; `judge_template` (default: the built-in one)
    is the judge's question."""
    from transformers import AutoTokenizer

    if kind not in SCORERS:
        raise ValueError(f"unknown scorer {kind!r}; choose one of {', '.join(SCORERS)}")
    settings = ScorerSettings(path, device, dtype, token_budget, judge_template or JudgeTemplate.load(None))
    return SCORERS[kind](settings, AutoTokenizer.from_pretrained(path))
