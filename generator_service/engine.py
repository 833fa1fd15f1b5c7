"""The native engine: the loaded model and what every session shares (tokenizer, input limits), put
together from its parts: the runner (the model's work), the KV pool (its memory, with admission),
the scheduler (who works next) and the decode loop (the thread that turns them)."""
import logging
import torch

from common.models import choose_device, choose_dtype, resolve_model
from common.tokenizer_fingerprint import tokenizer_fingerprint
from .admission import Admission
from .compile import compile_dense_parts
from .decode_loop import DecodeLoop
from .decoder import DEFAULT_ROW_BLOCK, CausalDecoder
from .kv_pool import KVPool
from .request_plan import CPU_DEFAULT_KV_BUDGET, InputLimits, RequestRules, SessionRequest, eos_token_ids
from .runner import ModelRunner
from .scheduler import Scheduler
from .session import Session

log = logging.getLogger(__name__)

_CUDA_MARGIN = 0.10  # of total memory left for activations, logits and the allocator


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
        self.tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.decoder = CausalDecoder(hf_model, row_block=row_block)
        self.eos_ids = eos_token_ids(hf_model.generation_config.eos_token_id, hf_model.config.eos_token_id,
                                     self.tokenizer.eos_token_id)
        self.max_batch_size = max_batch_size
        self.budget_bytes = kv_cache_budget or self._default_budget()
        self.bytes_per_token = self.decoder.kv_bytes_per_token()
        self.rules = RequestRules(limits, self.decoder.max_context, self.budget_bytes // self.bytes_per_token,
                                  self.bytes_per_token, max_batch_size)
        self.admission = Admission(self.rules.budget_tokens, max_sessions, max_queued)
        self.pool = KVPool(self.decoder, self.admission)
        self.compiled = compile_dense_parts(self.decoder, compile)
        self.loop = DecodeLoop(ModelRunner(self.decoder), self.pool, Scheduler(self.admission, self.decoder.padded_rows),
                               prefill_chunk_tokens)
        log.info("generator ready: %s on %s/%s, KV budget %d bytes (%d bytes/token)", path, self.device,
                 self.dtype, self.budget_bytes, self.bytes_per_token)

    def _default_budget(self) -> int:
        if self.device.type != "cuda":
            return CPU_DEFAULT_KV_BUDGET
        free, total = torch.cuda.mem_get_info(self.device)
        return max(0, int(free - _CUDA_MARGIN * total))

    def prepare(self, messages: list[dict], **options) -> SessionRequest:
        """Check the limits and tokenize; no model work, no memory held. Raises FieldError."""
        return self.rules.prepare(self.tokenizer, messages, **options)

    def plan(self, prompt_ids: list[int], **options) -> SessionRequest:
        """A request over token ids (see RequestRules.plan)."""
        return self.rules.plan(prompt_ids, **options)

    def admit(self, request: SessionRequest) -> Session:
        """A session for `request`, admitted now or queued; raises Overloaded when the queue is full.
        Its start() future answers once it is prefilled."""
        session = Session(request, self.tokenizer, self.eos_ids, self.pool, self.loop)
        self.loop.open(session)
        return session

    def open_session(self, messages: list[dict], **options) -> Session:
        """prepare() and admit() in one call."""
        return self.admit(self.prepare(messages, **options))

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

