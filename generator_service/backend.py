"""The generator's backend contract: all the gRPC servicer needs from an engine.

A backend knows its model (ModelInfo), checks and tokenizes a request (prepare), and opens a
session for it (admit, or Overloaded). A session holds one request's n candidates of one prompt:
start() prefills and samples the first tokens, advance(until, keep, fork_from) first drops the
running candidates not in `keep` (when given), then branches a new candidate from each running one
`fork_from` names (refill: it continues its parent's tokens, takes the session's next index and its
own random stream), then decodes until every running candidate has `until` response tokens (0: until
the session's share of the KV cache is full); prune(keep) drops alone, freeing the rejected ones'
memory; close() frees everything. Doing a decision point's prune and branches in one command keeps
the memory the prune frees for the branches.
Two backends serve it: `vllm` (vLLM's engine, the default) and `native` (this project's own
batch-invariant engine, for exact pairing)."""
import argparse
from dataclasses import dataclass, field
from typing import Protocol

from .request_plan import SessionRequest
from .sampling import SamplingParams

BACKENDS = ("vllm", "native")


@dataclass(frozen=True)
class ModelInfo:
    model: str
    device: str
    dtype: str
    kv_cache_budget_bytes: int
    kv_cache_bytes_per_token: int
    max_context_tokens: int
    max_batch_size: int
    tokenizer: str  # common.tokenizer_fingerprint of the model's tokenizer


@dataclass(frozen=True)
class Started:
    n: int
    prompt_tokens: int
    kv_cache_budget_bytes: int
    kv_cache_bytes: int
    prefill_seconds: float  # from admission to the first tokens, chunks of other sessions' decoding included
    capacity_tokens: int


@dataclass(frozen=True)
class SequenceUpdate:
    index: int
    text_delta: str
    num_tokens: int
    finish_reason: str  # "" while running, else "stop" or "length"
    token_ids: list[int]  # the tokens added since the previous update, end of sequence left out


@dataclass
class AdvanceResult:
    updates: list[SequenceUpdate] = field(default_factory=list)
    steps: int = 0
    decoded_tokens: int = 0
    decode_seconds: float = 0.0
    memory_full: bool = False
    position: int = 0
    kv_cache_bytes: int = 0
    capacity_tokens: int = 0
    step_seconds: list[float] = field(default_factory=list)  # of the shared steps this session took part in
    step_rows: list[int] = field(default_factory=list)  # this session's rows in each
    prune_seconds: float = 0.0  # of the prune that `keep` asked for


@dataclass(frozen=True)
class Pruned:
    running: int
    kv_cache_bytes: int
    prune_seconds: float
    capacity_tokens: int


class BackendSession(Protocol):
    async def start(self) -> Started: ...

    async def advance(self, until_tokens: int, keep: list[int] = (), fork_from: list[int] = ()) -> AdvanceResult:
        """Raises FieldError naming `keep` or `fork_from`, or Overloaded when branches need memory that is not free."""

    async def prune(self, keep: list[int]) -> Pruned: ...

    def close(self) -> None: ...


class GeneratorBackend(Protocol):
    info: ModelInfo

    def prepare(self, messages: list[dict], *, n: int, max_new_tokens: int, sampling: SamplingParams,
                min_tokens_before_full: int) -> SessionRequest:
        """Check the limits and tokenize (no model work, no memory held); raises FieldError."""

    def admit(self, request: SessionRequest) -> BackendSession:
        """A session, admitted now or queued until its KV cache fits; raises Overloaded."""

    def active_sessions(self) -> int: ...

    def running_sequences(self) -> int: ...

    def kv_cache_bytes(self) -> int: ...

    def healthy(self) -> bool:
        """False once the engine can serve no more (its decoding thread or process is gone)."""

    def shutdown(self) -> None: ...


def load_backend(args: argparse.Namespace) -> GeneratorBackend:
    """The backend `args.backend` names, its model loaded (seconds to minutes)."""
    from .request_plan import InputLimits

    limits = InputLimits(max_messages=args.max_messages, max_prompt_bytes=args.max_prompt_bytes,
                         max_prompt_tokens=args.max_prompt_tokens)
    common = dict(device=args.device, dtype=args.dtype, kv_cache_budget=args.kv_cache_budget,
                  max_batch_size=args.max_batch_size, max_sessions=args.max_sessions, max_queued=args.max_queued,
                  limits=limits, compile=args.compile, model_cache=args.model_cache)
    if args.backend == "native":
        from .engine import GeneratorEngine
        from .native_backend import NativeBackend

        return NativeBackend(GeneratorEngine(args.model, row_block=args.row_block,
                                             prefill_chunk_tokens=args.prefill_chunk_tokens, **common))
    from .vllm_backend import VllmBackend

    return VllmBackend(args.model, cpu_threads=args.cpu_threads, **common)
