"""One request's candidates: decoded as one batch, pruned on command, released at the end."""
import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from common.errors import FieldError
from .decoder import CausalDecoder
from .detokenizer import TextStream
from .planner import MemoryPlanner
from .sampling import SamplingParams, sample, uniforms


class SessionCancelled(RuntimeError):
    pass


@dataclass
class SequenceUpdate:
    index: int
    text_delta: str
    num_tokens: int
    finish_reason: str  # "" while running, else "stop" or "length"


@dataclass
class AdvanceResult:
    updates: list[SequenceUpdate]
    steps: int
    decoded_tokens: int
    decode_seconds: float
    memory_full: bool
    step_seconds: list[float] = field(default_factory=list)
    step_rows: list[int] = field(default_factory=list)


@dataclass
class _Sequence:
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stream: TextStream = field(default_factory=TextStream)


class Session:
    """Prefill once, decode all rows together, keep keys/values only for rows still useful.

    Finished rows stay in the batch (their samples are ignored) until a compaction, which a fixed
    rule on the batch alone triggers; a prune that rejects nothing changes nothing. So runs whose
    sequences finish alike see the same batch shapes, and, in batch-invariant mode, a row's tokens
    never depend on the other rows."""

    def __init__(
        self,
        decoder: CausalDecoder,
        tokenizer,
        planner: MemoryPlanner,
        prompt_ids: list[int],
        n: int,
        max_new_tokens: int,
        sampling: SamplingParams,
        min_tokens_before_full: int,
        eos_ids: set[int],
        model_lock: "threading.Lock | None" = None,
    ):
        self.decoder, self.tokenizer, self.planner = decoder, tokenizer, planner
        self.model_lock = model_lock or contextlib.nullcontext()
        self.prompt_length = len(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.eos_ids = set(eos_ids)
        self._eos_tensor = torch.tensor(sorted(eos_ids), device=decoder.device)
        if max_new_tokens < 1:
            raise FieldError("max_new_tokens", "must be at least 1")
        if self.prompt_length + max_new_tokens > decoder.max_context:
            raise FieldError(
                "max_new_tokens",
                f"prompt ({self.prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {decoder.max_context} tokens",
            )
        needed = min(min_tokens_before_full or max_new_tokens, max_new_tokens)
        most = planner.max_rows(self.prompt_length, needed)
        if most < 1:
            raise FieldError("n", f"a {self.prompt_length}-token prompt leaves no room in the KV-cache budget")
        if n > most:
            raise FieldError(
                "n",
                f"{n} candidates do not fit: with a {self.prompt_length}-token prompt and {needed} tokens per "
                f"candidate before the first decision point, the KV-cache budget ({planner.budget_bytes} bytes) and "
                f"batch limit ({planner.max_batch_size}) allow at most {most}",
            )
        self.n = n or most
        self.sequences = [_Sequence() for _ in range(self.n)]
        self.prompt_ids = torch.tensor(prompt_ids, dtype=torch.long)
        self.prefix: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None  # keys/values of the rows' own tokens
        self.row_index = torch.arange(self.n, device=decoder.device)  # which sequence each row is
        self.row_running = torch.ones(self.n, dtype=torch.bool, device=decoder.device)
        self.last_tokens = torch.zeros(decoder.padded_rows(self.n), dtype=torch.long, device=decoder.device)
        self.position = 0  # response tokens sampled so far by every running row
        self.capacity = 0  # response tokens the rows can reach before the KV cache is full
        self.cancelled = threading.Event()

    @property
    def kv_cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prefix, self.rows) if t is not None)

    @property
    def running_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.sequences) if not s.finish_reason]

    def start(self) -> float:
        """Prefill the prompt and sample every row's first token; returns the prefill seconds."""
        began = time.perf_counter()
        with self.model_lock:
            self.prefix, first_logits = self.decoder.prefill(self.prompt_ids)
        self._allocate(self.n)
        first = self._sample(first_logits.expand(self.n, -1))
        self._accept(first)
        self._commit([first])
        return time.perf_counter() - began

    def advance(self, until_tokens: int = 0) -> AdvanceResult:
        """Decode until the running rows hold `until_tokens` tokens (0: until the KV cache is full),
        every row has finished, or max_new_tokens is reached."""
        reporting = self.running_indices
        target = min(until_tokens or self.max_new_tokens, self.max_new_tokens)
        began = time.perf_counter()
        result = AdvanceResult([], 0, 0, 0.0, False)
        pending: list[torch.Tensor] = []
        while self.position < min(target, self.capacity) and bool(self.row_running.any()):
            if self.cancelled.is_set():
                raise SessionCancelled("the client went away")
            step_began = time.perf_counter()
            real = self.row_index.shape[0]
            with self.model_lock:
                logits = self.decoder.decode_step(
                    self.last_tokens, self.prefix, self.rows, self.position - 1, self.prompt_length
                )
            result.decoded_tokens += int(self.row_running.sum())
            tokens = self._sample(logits[:real])
            self._accept(tokens)
            pending.append(tokens)
            result.steps += 1
            result.step_seconds.append(time.perf_counter() - step_began)
            result.step_rows.append(real)
            if self._should_compact():
                self._commit(pending)
                pending = []
                self._keep_rows(self.row_running)
        self._commit(pending)
        result.memory_full = self.position >= self.capacity and self.position < target and bool(self.running_indices)
        result.decode_seconds = time.perf_counter() - began
        result.updates = self._updates(reporting)
        return result

    def prune(self, keep: list[int]) -> float:
        """Drop every running sequence not in `keep`; returns the seconds it took."""
        began = time.perf_counter()
        running = set(self.running_indices)
        unknown = sorted(set(keep) - running)
        if unknown:
            raise FieldError("keep", f"indices {unknown} are not running sequences of this session")
        rejected = running - set(keep)
        if rejected:
            for index in rejected:
                self.sequences[index].finish_reason = "rejected"
            kept = torch.tensor([self.sequences[i].finish_reason == "" for i in self.row_index.tolist()])
            self._keep_rows(kept.to(self.row_index.device))
        return time.perf_counter() - began

    def close(self) -> None:
        self.prefix = self.rows = None

    def _accept(self, tokens: torch.Tensor) -> None:
        """Take one sampled token per row as the rows' next input."""
        self.last_tokens[: tokens.shape[0]] = tokens
        self.row_running &= ~torch.isin(tokens, self._eos_tensor)
        self.position += 1

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        return sample(logits, uniforms(self.sampling.seed, self.row_index, self.position), self.sampling)

    def _allocate(self, rows: int) -> None:
        self.capacity = self.planner.capacity(self.prompt_length, rows, self.max_new_tokens)
        self.rows = self.decoder.new_row_cache(rows, self.capacity)

    def _should_compact(self) -> bool:
        """Compact when it would shrink the padded batch by at least a quarter."""
        pad = self.decoder.padded_rows
        alive = int(self.row_running.sum())
        return alive > 0 and pad(alive) * 4 <= pad(self.row_index.shape[0]) * 3

    def _keep_rows(self, keep_mask: torch.Tensor) -> None:
        """Copy the kept rows' keys/values into a new buffer sized for them (memory really freed)
        and let the survivors grow into the room that frees."""
        keep = keep_mask.nonzero().flatten()
        old, used = self.rows, max(self.position - 1, 0)
        self._allocate(keep.shape[0])
        for layer in range(old.shape[0]):
            self.rows[layer, :, :, :, :used] = old[layer, :, keep, :, :used]
        real = keep.shape[0]
        last = self.last_tokens[keep]
        self.last_tokens = torch.zeros(self.decoder.padded_rows(real), dtype=torch.long, device=last.device)
        self.last_tokens[:real] = last
        self.row_index = self.row_index[keep]
        self.row_running = self.row_running[keep]

    def _commit(self, steps: list[torch.Tensor]) -> None:
        """Append sampled tokens (one tensor per step, aligned with the rows) to the sequences and
        mark ends of sequence and length limits; one device-to-host copy."""
        if not steps:
            return
        table = torch.stack(steps).T.tolist()
        for index, row_tokens in zip(self.row_index.tolist(), table):
            sequence = self.sequences[index]
            for token in row_tokens:
                if sequence.finish_reason:
                    break
                sequence.tokens.append(token)
                if token in self.eos_ids:
                    sequence.finish_reason = "stop"
                elif len(sequence.tokens) >= self.max_new_tokens:
                    sequence.finish_reason = "length"

    def _updates(self, indices: list[int]) -> list[SequenceUpdate]:
        sequences = [self.sequences[i] for i in indices]
        bodies = [s.tokens[:-1] if s.finish_reason == "stop" else s.tokens for s in sequences]
        texts = self.tokenizer.batch_decode(bodies, skip_special_tokens=True)
        return [
            SequenceUpdate(i, s.stream.delta(text, final=bool(s.finish_reason)), len(s.tokens), s.finish_reason)
            for i, s, text in zip(indices, sequences, texts)
        ]
