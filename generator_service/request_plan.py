"""Checking and sizing a session request before any model work: the rules every generator backend
applies the same way (input limits, context length, how many candidates fit in the KV cache)."""
from dataclasses import dataclass

from common.chat import PromptError, prompt_token_ids
from common.errors import FieldError
from .planner import MemoryPlanner
from .sampling import SamplingParams

CPU_DEFAULT_KV_BUDGET = 2 * 1024**3  # bytes of KV cache on CPU unless --kv-cache-budget says otherwise


def eos_token_ids(*sources) -> set[int]:
    """Every end-of-sequence id the given settings name (each an id, a list of ids, or None)."""
    ids = set()
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


@dataclass(frozen=True)
class InputLimits:
    """What a request may bring, checked before any model work: a prompt too large is refused
    cheaply instead of holding the decode loop (chunked prefill bounds the stall, not the cost)."""

    max_messages: int = 256
    max_prompt_bytes: int = 1024 * 1024  # UTF-8 bytes of all message contents, before tokenizing
    max_prompt_tokens: int = 0  # 0 = the model's context less one token to generate


@dataclass(frozen=True)
class SessionRequest:
    """A validated, tokenized request; no memory held yet."""

    prompt_ids: list[int]
    n: int
    max_new_tokens: int
    sampling: SamplingParams
    # KV-cache tokens (prompt included) reserved from the shared pool at admission: enough for
    # every row to reach the first decision point. The session's memory-driven decision points
    # come when its rows fill this, whatever else runs, so they never depend on the load.
    reservation_tokens: int
    stop_at_eos: bool = True


@dataclass(frozen=True)
class RequestRules:
    """One backend's limits: its model's context, its KV-cache pool and batch size."""

    limits: InputLimits
    max_context: int
    budget_tokens: int  # KV-cache tokens of the whole pool
    bytes_per_token: int
    max_batch_size: int

    @property
    def max_prompt_tokens(self) -> int:
        # At least one token must be left to generate.
        return min(self.limits.max_prompt_tokens or self.max_context, self.max_context - 1)

    def prepare(self, tokenizer, messages: list[dict], *, n: int, max_new_tokens: int, sampling: SamplingParams,
                min_tokens_before_full: int, kv_budget_tokens: int | None = None) -> SessionRequest:
        """Check the limits and tokenize. Raises FieldError."""
        self.check_messages(messages)
        try:
            prompt_ids = prompt_token_ids(tokenizer, messages)
        except PromptError as error:
            raise FieldError("messages", str(error)) from None
        return self.plan(prompt_ids, n=n, max_new_tokens=max_new_tokens, sampling=sampling,
                         min_tokens_before_full=min_tokens_before_full, kv_budget_tokens=kv_budget_tokens)

    def plan(self, prompt_ids: list[int], *, n: int, max_new_tokens: int, sampling: SamplingParams,
             min_tokens_before_full: int, kv_budget_tokens: int | None = None,
             stop_at_eos: bool = True) -> SessionRequest:
        """A request over token ids. `kv_budget_tokens` reserves that many response tokens beyond
        the prompt instead of what the first decision point needs (memory-driven decision points
        then fall where the caller wants them)."""
        prompt = len(prompt_ids)
        if prompt > self.max_prompt_tokens:
            raise FieldError("messages",
                             f"the prompt has {prompt} tokens; at most {self.max_prompt_tokens} are allowed")
        if max_new_tokens < 1:
            raise FieldError("max_new_tokens", "must be at least 1")
        if prompt + max_new_tokens > self.max_context:
            raise FieldError(
                "max_new_tokens",
                f"prompt ({prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {self.max_context} tokens",
            )
        needed = min(min_tokens_before_full or max_new_tokens, max_new_tokens)
        budget_tokens = self.budget_tokens if kv_budget_tokens is None else prompt + kv_budget_tokens
        planner = MemoryPlanner(budget_tokens * self.bytes_per_token, self.bytes_per_token, self.max_batch_size)
        most = planner.max_rows(prompt, needed)
        if most < 1:
            raise FieldError("n", f"a {prompt}-token prompt leaves no room in the KV-cache budget")
        if n > most:
            raise FieldError(
                "n",
                f"{n} candidates do not fit: with a {prompt}-token prompt and {needed} tokens per candidate before "
                f"the first decision point, the KV-cache budget ({planner.budget_bytes} bytes) and batch limit "
                f"({self.max_batch_size}) allow at most {most}",
            )
        n = n or most
        reservation = prompt + (n * needed if kv_budget_tokens is None else kv_budget_tokens)
        if reservation > self.budget_tokens:
            raise FieldError("n", f"the session needs {reservation} tokens of KV cache; the whole budget holds "
                                  f"{self.budget_tokens}")
        return SessionRequest(list(prompt_ids), n, max_new_tokens, sampling, reservation, stop_at_eos)

    def check_messages(self, messages: list[dict]) -> None:
        limits = self.limits
        if len(messages) > limits.max_messages:
            raise FieldError("messages", f"{len(messages)} messages; at most {limits.max_messages} are allowed")
        total = 0
        for index, message in enumerate(messages):
            size = len(message["content"].encode("utf-8"))
            if size > limits.max_prompt_bytes:
                raise FieldError(f"messages[{index}].content",
                                 f"{size} bytes; at most {limits.max_prompt_bytes} are allowed")
            total += size
        if total > limits.max_prompt_bytes:
            raise FieldError("messages", f"{total} bytes of content; at most {limits.max_prompt_bytes} are allowed")
