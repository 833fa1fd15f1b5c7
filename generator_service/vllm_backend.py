"""The backend contract over vLLM's asynchronous engine (AsyncLLM), in the generator's process.

A session is n vLLM requests of one prompt, one per candidate, each with its own seed derived
from (seed, index), so a run is reproducible where vLLM's kernels are; prefix caching shares the
prompt's KV blocks between them. vLLM decodes every candidate continuously to max_new_tokens:
advance(until) answers once each running candidate has `until` tokens and reports exactly those,
keeping what a candidate decoded beyond them for the next advance (candidates run ahead while
the coordinator scores); prune aborts the rejected requests, which frees their blocks at once. A
branch (refill) is one more request whose prompt is the prompt plus the tokens its parent had
reported, served from the prefix cache, seeded from (seed, its new index).
Admission and memory-driven decision points use the same per-session reservation as the native
backend, over vLLM's own KV-cache pool."""
import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field

from common.errors import FieldError
from common.models import choose_device, choose_dtype, resolve_cpu_threads, resolve_model, service_cores
from common.tokenizer_fingerprint import tokenizer_fingerprint
from . import metrics
from .admission import Admission
from .backend import AdvanceResult, ModelInfo, Pruned, SequenceUpdate, Started
from .branching import fork_reservation
from .detokenizer import IncrementalDetokenizer
from .planner import MemoryPlanner
from .request_plan import CPU_DEFAULT_KV_BUDGET, InputLimits, RequestRules, SessionRequest, eos_token_ids

log = logging.getLogger(__name__)

_CUDA_MEMORY_UTILIZATION = 0.90
# vLLM's CPU attention wants blocks in multiples of 32; small blocks let candidates share more of a
# short prompt (prefix caching shares whole blocks only).
_CPU_BLOCK_SIZE = 32
_SEED_STRIDE = 1_000_003  # a prime: (seed, index) pairs map to distinct per-candidate seeds


def candidate_seed(seed: int, index: int) -> int:
    return (seed * _SEED_STRIDE + index) % (2**63)


@dataclass
class _Candidate:
    request_id: str
    detokenizer: IncrementalDetokenizer
    tokens: list[int] = field(default_factory=list)  # decoded so far, some perhaps not yet reported
    finish_reason: str = ""  # how vLLM ended it: "stop", "length", "abort"
    reported: int = 0  # tokens the client has heard of
    reported_finish: str = ""  # the end the client has heard of ("rejected" after a prune)
    inherited: int = 0  # a branch's first tokens, its parent's: part of its vLLM request's prompt

    @property
    def open(self) -> bool:
        """Neither ended for the client nor rejected by it."""
        return not self.reported_finish


class VllmSession:
    def __init__(self, backend: "VllmBackend", request: SessionRequest, session_id: int):
        self.backend, self.request, self.session_id = backend, request, session_id
        self.n, self.max_new_tokens = request.n, request.max_new_tokens
        self.prompt_length = len(request.prompt_ids)
        # What admission.Admission reads and writes.
        self.reservation_tokens = request.reservation_tokens
        self.admitted = False
        self.arrived = time.perf_counter()
        self.admitted_at = 0.0
        self.candidates = [
            _Candidate(f"s{session_id}-{index}", IncrementalDetokenizer(backend.tokenizer))
            for index in range(self.n)]
        self.capacity = 0
        self.closed = False
        self._admitted_event = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._error: BaseException | None = None
        self._busy = False

    async def start(self) -> Started:
        self._begin_command()
        try:
            await self._admitted_event.wait()
            self._check_open()
            self._tasks = [asyncio.create_task(self._decode(c, index)) for index, c in enumerate(self.candidates)]
            await self._wait_until(lambda c: bool(c.tokens) or bool(c.finish_reason))
            self.capacity = self._capacity(self.n)
            return Started(n=self.n, prompt_tokens=self.prompt_length,
                           kv_cache_budget_bytes=self.reservation_tokens * self.backend.bytes_per_token,
                           kv_cache_bytes=self.kv_cache_bytes, prefill_seconds=time.perf_counter() - self.admitted_at,
                           capacity_tokens=self.capacity)
        finally:
            self._busy = False

    async def advance(self, until_tokens: int, keep: list[int] = (), fork_from: list[int] = ()) -> AdvanceResult:
        self._begin_command(started=True)
        try:
            began = time.perf_counter()
            if keep:
                await self._prune(list(keep))
            prune_seconds = time.perf_counter() - began
            if fork_from:
                self._fork(list(fork_from))
            if keep or fork_from:
                self.backend.admit_waiting()
            wanted = min(until_tokens or self.max_new_tokens, self.max_new_tokens)
            target = min(wanted, self.capacity)  # the session's reservation bounds it, as on every backend
            reporting = [i for i, c in enumerate(self.candidates) if c.open]
            await self._wait_until(lambda c: len(c.tokens) >= target or bool(c.finish_reason), reporting)
            before = {i: self.candidates[i].reported for i in reporting}
            updates = [self._report(index, target) for index in reporting]
            decoded = sum(u.num_tokens - before[u.index] for u in updates)
            running = [c for c in self.candidates if c.open]
            return AdvanceResult(
                updates=updates, steps=max((u.num_tokens - before[u.index] for u in updates), default=0),
                decoded_tokens=decoded, decode_seconds=time.perf_counter() - began,
                memory_full=target < wanted and bool(running),
                position=max((c.reported for c in running), default=target),
                kv_cache_bytes=self.kv_cache_bytes, capacity_tokens=self.capacity, prune_seconds=prune_seconds)
        finally:
            self._busy = False

    async def prune(self, keep: list[int]) -> Pruned:
        self._begin_command(started=True)
        try:
            began = time.perf_counter()
            survivors = await self._prune(keep)
            self.backend.admit_waiting()
            return Pruned(survivors, self.kv_cache_bytes, time.perf_counter() - began, self.capacity)
        finally:
            self._busy = False

    def close(self) -> None:
        """Abort what still decodes and give the reservation back; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        unfinished = [c.request_id for c in self.candidates if not c.finish_reason]
        if self._tasks and unfinished:
            asyncio.get_running_loop().create_task(self.backend.engine.abort(unfinished))
        self.backend.leave(self)

    @property
    def kv_cache_bytes(self) -> int:
        """The prompt once (prefix caching) and each candidate still decoding's tokens."""
        if self.closed or not self.admitted:
            return 0
        held = sum(len(c.tokens) for c in self.candidates if c.open and not c.finish_reason)
        return (self.prompt_length + held) * self.backend.bytes_per_token

    @property
    def running_sequences(self) -> int:
        return sum(1 for c in self.candidates if c.open) if self._tasks else 0

    # Internals.

    async def _prune(self, keep: list[int]) -> int:
        """Abort the running candidates not in `keep` and shrink the reservation to what the
        survivors can use (the caller lets waiting sessions in); returns how many survive."""
        running = {i for i, c in enumerate(self.candidates) if c.open}
        unknown = sorted(set(keep) - running)
        if unknown:
            raise FieldError("keep", f"indices {unknown} are not running sequences of this session")
        rejected = sorted(running - set(keep))
        for index in rejected:
            self.candidates[index].reported_finish = "rejected"
        await self._abort([self.candidates[i] for i in rejected])
        survivors = len(running) - len(rejected)
        if rejected:
            self.backend.admission.shrink(self, min(self.reservation_tokens,
                                                    self.prompt_length + survivors * self.max_new_tokens))
            self.capacity = self._capacity(survivors)
        return survivors

    def _fork(self, parents: list[int]) -> None:
        """A new candidate (the next index) per parent, continuing the tokens the parent reported."""
        running = [i for i, c in enumerate(self.candidates) if c.open]
        self.backend.admission.grow(self, fork_reservation(
            parents, running, n=self.n, prompt_tokens=self.prompt_length, max_new_tokens=self.max_new_tokens,
            reservation_tokens=self.reservation_tokens, initial_reservation_tokens=self.request.reservation_tokens,
            bytes_per_token=self.backend.bytes_per_token,
            position=max((self.candidates[i].reported for i in running), default=0)))
        self.capacity = self._capacity(len(running) + len(parents))
        for parent in parents:
            index, source = len(self.candidates), self.candidates[parent]
            branch = _Candidate(f"s{self.session_id}-{index}", source.detokenizer.branch(),
                                tokens=source.tokens[:source.reported], reported=source.reported,
                                inherited=source.reported)
            self.candidates.append(branch)
            self._tasks.append(asyncio.create_task(self._decode(branch, index)))

    def _begin_command(self, started: bool = False) -> None:
        if self._busy or (started and not self._tasks):
            raise FieldError("command", "one command at a time, after the session has started")
        self._check_open()
        self._busy = True

    def _check_open(self) -> None:
        if self.closed:
            raise asyncio.CancelledError("the session was closed")
        if self._error is not None:
            raise self._error

    def _capacity(self, rows: int) -> int:
        bytes_per_token = self.backend.bytes_per_token
        planner = MemoryPlanner(self.reservation_tokens * bytes_per_token, bytes_per_token, max_batch_size=self.n)
        return planner.capacity(self.prompt_length, rows, self.max_new_tokens)

    async def _wait_until(self, reached, indices: list[int] | None = None) -> None:
        chosen = [self.candidates[i] for i in (range(len(self.candidates)) if indices is None else indices)]
        while True:
            self._check_open()
            if all(reached(c) for c in chosen):
                return
            self._changed.clear()
            await self._changed.wait()

    def _report(self, index: int, target: int) -> SequenceUpdate:
        candidate = self.candidates[index]
        visible = min(len(candidate.tokens), target)
        ends_here = bool(candidate.finish_reason) and len(candidate.tokens) <= target
        new = candidate.tokens[candidate.reported:visible]
        if ends_here and candidate.finish_reason == "stop" and new and new[-1] in self.backend.eos_ids:
            new = new[:-1]  # the end-of-sequence token is counted, not written
        text = candidate.detokenizer.add(new)
        candidate.reported = visible
        if ends_here:
            text += candidate.detokenizer.finish()
            candidate.reported_finish = "stop" if candidate.finish_reason == "stop" else "length"
        return SequenceUpdate(index, text, visible, candidate.reported_finish, new)

    async def _decode(self, candidate: _Candidate, index: int) -> None:
        """Feed one vLLM request's tokens into `candidate` as they come."""
        params = self.backend.sampling_params(self.request, index, candidate.inherited)
        prompt = self.request.prompt_ids + candidate.tokens[:candidate.inherited]
        try:
            async for output in self.backend.engine.generate(
                    {"prompt_token_ids": prompt}, params, request_id=candidate.request_id):
                completion = output.outputs[0]
                candidate.tokens.extend(completion.token_ids)
                metrics.TOKENS.labels(metrics.SERVICE).inc(len(completion.token_ids))
                if output.finished:
                    candidate.finish_reason = completion.finish_reason or "stop"
                self._changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the engine failed: every waiter of this session hears it
            log.exception("vLLM request %s failed", candidate.request_id)
            self._error = error
            self._changed.set()

    async def _abort(self, candidates: list[_Candidate]) -> None:
        ids = [c.request_id for c in candidates if not c.finish_reason]
        if ids:
            await self.backend.engine.abort(ids)


class VllmBackend:
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 kv_cache_budget: int | None = None, max_batch_size: int = 256, max_sessions: int = 16,
                 max_queued: int = 32, limits: InputLimits = InputLimits(), compile: str = "auto",
                 model_cache: str | None = None, cpu_threads: int | str = "auto"):
        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, self.device)
        dtype_name = str(self.dtype).removeprefix("torch.")
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            _bind_cpu_threads(resolve_cpu_threads(cpu_threads))
        elif self.device.index is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.device.index)  # vLLM uses the first visible GPU
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        from transformers import AutoConfig, AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        path = resolve_model(model, model_cache)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        budget = kv_cache_budget or (CPU_DEFAULT_KV_BUDGET if on_cpu else None)
        block_size = _CPU_BLOCK_SIZE if on_cpu else None
        config = AutoConfig.from_pretrained(path).get_text_config()
        self.bytes_per_token = _kv_bytes_per_token(config, self.dtype)
        max_model_len = _context_within(config, self.bytes_per_token, budget, block_size or 16)
        # vLLM 0.32's CPU build fails its whole engine when a seeded request's prefill is split over
        # steps (it rewinds a CPU random generator, which has no offset): on CPU, prompts are prefilled
        # whole, and a step takes up to a full context of prompt tokens.
        whole_prefills = dict(enable_chunked_prefill=False, max_num_batched_tokens=max_model_len) if on_cpu else {}
        engine_args = AsyncEngineArgs(
            model=path, tokenizer=path, dtype=dtype_name, seed=0,
            max_model_len=max_model_len, **whole_prefills,
            enable_prefix_caching=True, max_num_seqs=max_batch_size, disable_log_stats=True,
            enforce_eager=compile == "off", block_size=block_size,
            kv_cache_memory_bytes=budget,
            gpu_memory_utilization=_CUDA_MEMORY_UTILIZATION)
        self.engine = AsyncLLM.from_engine_args(engine_args)
        model_config, cache_config = self.engine.vllm_config.model_config, self.engine.vllm_config.cache_config
        pool_tokens = cache_config.num_gpu_blocks * cache_config.block_size
        self.rules = RequestRules(limits, model_config.max_model_len, pool_tokens, self.bytes_per_token,
                                  max_batch_size)
        self.admission = Admission(pool_tokens, max_sessions, max_queued)
        self.eos_ids = eos_token_ids(model_config.hf_config.eos_token_id, self.tokenizer.eos_token_id)
        self.info = ModelInfo(
            model=model or "SmolLM2-135M-Instruct (embedded)", device=str(self.device),
            dtype=dtype_name, kv_cache_budget_bytes=pool_tokens * self.bytes_per_token,
            kv_cache_bytes_per_token=self.bytes_per_token, max_context_tokens=model_config.max_model_len,
            max_batch_size=max_batch_size, tokenizer=tokenizer_fingerprint(self.tokenizer))
        self._sessions: set[VllmSession] = set()
        self._ids = itertools.count()
        log.info("generator ready on vLLM: %s on %s/%s, KV pool %d tokens (%d bytes/token)", path, self.device,
                 self.dtype, pool_tokens, self.bytes_per_token)

    def prepare(self, messages: list[dict], **options) -> SessionRequest:
        return self.rules.prepare(self.tokenizer, messages, **options)

    def admit(self, request: SessionRequest) -> VllmSession:
        session = VllmSession(self, request, next(self._ids))
        self.admission.enqueue(session)
        self._sessions.add(session)
        self.admit_waiting()
        return session

    def admit_waiting(self) -> None:
        for session in self.admission.take_admitted():
            session._admitted_event.set()

    def leave(self, session: VllmSession) -> None:
        self.admission.leave(session)
        self._sessions.discard(session)
        self.admit_waiting()

    def sampling_params(self, request: SessionRequest, index: int, inherited: int):
        """Candidate `index`'s; a branch's request writes the response tokens beyond the `inherited` ones."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = request.sampling
        return SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            seed=candidate_seed(sampling.seed, index), max_tokens=request.max_new_tokens - inherited,
            ignore_eos=not request.stop_at_eos, detokenize=False, output_kind=RequestOutputKind.DELTA)

    def active_sessions(self) -> int:
        return self.admission.active

    def running_sequences(self) -> int:
        return sum(s.running_sequences for s in self._sessions)

    def kv_cache_bytes(self) -> int:
        return sum(s.kv_cache_bytes for s in self._sessions)

    def healthy(self) -> bool:
        return self.engine is not None and not self.engine.errored

    def shutdown(self) -> None:
        # Dropped here, not at interpreter exit, where vLLM's own finaliser fails on torn-down modules.
        engine, self.engine = self.engine, None
        engine.shutdown()


def _bind_cpu_threads(threads: int) -> None:
    """vLLM's CPU worker binds its OpenMP threads to the cores VLLM_CPU_OMP_THREADS_BIND lists; unless
    that is set, take the generator's share of the cores this process may use (all of them for 0)."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, service_cores(threads, "first"))))


def _kv_bytes_per_token(config, dtype) -> int:
    """Keys and values of one token over every layer, from a Hugging Face text config."""
    import torch

    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_size * torch.finfo(dtype).bits // 8


def _context_within(config, bytes_per_token: int, budget_bytes: int | None, block_size: int) -> int:
    """The model's context, shortened to what a KV-cache budget holds, if one is given (vLLM refuses
    to start when one request of the full context would not fit)."""
    if budget_bytes is None:
        return config.max_position_embeddings
    # vLLM keeps one block of its pool aside (the null block).
    fits = (budget_bytes // bytes_per_token // block_size - 1) * block_size
    if fits < block_size:
        raise ValueError(f"a KV-cache budget of {budget_bytes} bytes holds less than one block of {block_size} tokens")
    return min(config.max_position_embeddings, fits)
