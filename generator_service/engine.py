"""The loaded model and what every session shares: tokenizer, input limits, the KV-cache pool,
admission and the decode loop."""
import logging
from dataclasses import dataclass

import torch

from common.chat import PromptError, prompt_token_ids
from common.errors import FieldError
from common.models import choose_device, choose_dtype, resolve_model
from .admission import Admission
from .compile import compile_dense_parts
from .decode_loop import DecodeLoop
from .decoder import DEFAULT_ROW_BLOCK, CausalDecoder
from .planner import MemoryPlanner
from .sampling import SamplingParams
from .session import Session, SessionRequest

log = logging.getLogger(__name__)

_CPU_DEFAULT_BUDGET = 2 * 1024**3
_CUDA_MARGIN = 0.10  # of total memory left for activations, logits and the allocator


@dataclass(frozen=True)
class InputLimits:
    """What a request may bring, checked before any model work: a prompt too large is refused
    cheaply instead of holding the decode loop (chunked prefill bounds the stall, not the cost)."""

    max_messages: int = 256
    max_prompt_bytes: int = 1024 * 1024  # UTF-8 bytes of all message contents, before tokenizing
    max_prompt_tokens: int = 0  # 0 = the model's context less one token to generate


class GeneratorEngine:
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 kv_cache_budget: int | None = None, max_batch_size: int = 256, max_sessions: int = 16,
                 max_queued: int = 32, row_block: int = DEFAULT_ROW_BLOCK, prefill_chunk_tokens: int = 256,
                 limits: InputLimits = InputLimits(), compile: str = "auto", model_cache: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, self.device)
        self.model_name = model or "SmolLM2-135M-Instruct (embedded)"
        path = resolve_model(model, model_cache)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.decoder = CausalDecoder(hf_model, row_block=row_block)
        self.eos_ids = _eos_ids(hf_model, self.tokenizer)
        self.max_batch_size = max_batch_size
        self.limits = limits
        # At least one token must be left to generate.
        self.max_prompt_tokens = min(limits.max_prompt_tokens or self.decoder.max_context, self.decoder.max_context - 1)
        self.budget_bytes = kv_cache_budget or self._default_budget()
        self.bytes_per_token = self.decoder.kv_bytes_per_token()
        self.admission = Admission(self.budget_bytes // self.bytes_per_token, max_sessions, max_queued)
        self.compiled = compile_dense_parts(self.decoder, compile)
        self.loop = DecodeLoop(self.decoder, self.admission, prefill_chunk_tokens)
        log.info("generator ready: %s on %s/%s, KV budget %d bytes (%d bytes/token)", path, self.device,
                 self.dtype, self.budget_bytes, self.bytes_per_token)

    def _default_budget(self) -> int:
        if self.device.type != "cuda":
            return _CPU_DEFAULT_BUDGET
        free, total = torch.cuda.mem_get_info(self.device)
        return max(0, int(free - _CUDA_MARGIN * total))

    def prepare(self, messages: list[dict], *, n: int, max_new_tokens: int, sampling: SamplingParams,
                min_tokens_before_full: int, kv_budget_tokens: int | None = None) -> SessionRequest:
        """Check the limits and tokenize; no model work, no memory held. Raises FieldError."""
        self._check_messages(messages)
        try:
            prompt_ids = prompt_token_ids(self.tokenizer, messages)
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
        if prompt + max_new_tokens > self.decoder.max_context:
            raise FieldError(
                "max_new_tokens",
                f"prompt ({prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {self.decoder.max_context} tokens",
            )
        needed = min(min_tokens_before_full or max_new_tokens, max_new_tokens)
        budget_tokens = self.admission.budget_tokens if kv_budget_tokens is None else prompt + kv_budget_tokens
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
        if reservation > self.admission.budget_tokens:
            raise FieldError("n", f"the session needs {reservation} tokens of KV cache; the whole budget holds "
                                  f"{self.admission.budget_tokens}")
        return SessionRequest(list(prompt_ids), n, max_new_tokens, sampling, reservation, stop_at_eos)

    def admit(self, request: SessionRequest) -> Session:
        """A session for `request`, admitted now or queued; raises Overloaded when the queue is full.
        Its start() future answers once it is prefilled."""
        session = Session(request, self.decoder, self.tokenizer, self.eos_ids, self.loop)
        self.loop.open(session)
        return session

    def open_session(self, messages: list[dict], **options) -> Session:
        """prepare() and admit() in one call."""
        return self.admit(self.prepare(messages, **options))

    def _check_messages(self, messages: list[dict]) -> None:
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

    @property
    def sessions(self) -> list[Session]:
        return self.loop.sessions()

    def kv_cache_bytes(self) -> int:
        return sum(s.kv_cache_bytes for s in self.loop.sessions())

    def running_sequences(self) -> int:
        return sum(len(s.running_indices) for s in self.loop.sessions() if s.prefix is not None)

    def shutdown(self) -> None:
        """Stop the decode loop; sessions still open get SessionCancelled for what they wait for."""
        self.loop.stop()


def _eos_ids(hf_model, tokenizer) -> set[int]:
    ids = set()
    for source in (hf_model.generation_config.eos_token_id, hf_model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
