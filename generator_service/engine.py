"""The loaded model and everything sessions share: tokenizer, memory planner, admission, lock."""
import logging
import threading

import torch

from common.chat import prompt_token_ids
from common.models import choose_device, choose_dtype, resolve_model
from .admission import SessionSlots
from .decoder import DEFAULT_ROW_BLOCK, CausalDecoder
from .planner import MemoryPlanner
from .sampling import SamplingParams
from .session import Session

log = logging.getLogger(__name__)

_CPU_DEFAULT_BUDGET = 2 * 1024**3
_CUDA_MARGIN = 0.10  # of total memory left for activations, logits and the allocator


class GeneratorEngine:
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 kv_cache_budget: int | None = None, max_batch_size: int = 256, max_sessions: int = 1,
                 max_queued: int = 16, row_block: int = DEFAULT_ROW_BLOCK, model_cache: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, self.device)
        self.model_name = model or "SmolLM2-135M-Instruct (embedded)"
        path = resolve_model(model, model_cache)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.decoder = CausalDecoder(hf_model, row_block=row_block)
        self.eos_ids = _eos_ids(hf_model, self.tokenizer)
        self.budget_bytes = kv_cache_budget or self._default_budget()
        self.planner = MemoryPlanner(
            budget_bytes=self.budget_bytes // max_sessions,
            bytes_per_token=self.decoder.kv_bytes_per_token(),
            max_batch_size=max_batch_size,
        )
        self.slots = SessionSlots(max_sessions, max_queued)
        self.model_lock = threading.Lock()
        self.sessions: set[Session] = set()
        self._sessions_lock = threading.Lock()
        log.info("generator ready: %s on %s/%s, KV budget %d bytes (%d bytes/token)", path, self.device,
                 self.dtype, self.budget_bytes, self.decoder.kv_bytes_per_token())

    def _default_budget(self) -> int:
        if self.device.type != "cuda":
            return _CPU_DEFAULT_BUDGET
        free, total = torch.cuda.mem_get_info(self.device)
        return max(0, int(free - _CUDA_MARGIN * total))

    def open_session(self, messages: list[dict], *, n: int, max_new_tokens: int, sampling: SamplingParams,
                     min_tokens_before_full: int, planner: MemoryPlanner | None = None) -> Session:
        """A new session over the shared model; `planner` overrides the engine's memory plan."""
        session = Session(
            self.decoder, self.tokenizer, planner or self.planner, prompt_token_ids(self.tokenizer, messages), n,
            max_new_tokens, sampling, min_tokens_before_full, self.eos_ids, self.model_lock,
        )
        with self._sessions_lock:
            self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        with self._sessions_lock:
            self.sessions.discard(session)
        session.close()
        if self.device.type == "cuda":
            # Hand freed KV memory back so other processes and the budget see it.
            torch.cuda.empty_cache()

    def kv_cache_bytes(self) -> int:
        with self._sessions_lock:
            return sum(s.kv_cache_bytes for s in self.sessions)

    def running_sequences(self) -> int:
        with self._sessions_lock:
            return sum(len(s.running_indices) for s in self.sessions)


def _eos_ids(hf_model, tokenizer) -> set[int]:
    ids = set()
    for source in (hf_model.generation_config.eos_token_id, hf_model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
