"""One request's candidates as state and futures: its sequences' tokens and text, which sequence
each row of its batch is, how far the rows have decoded, and what its caller waits for.

Its public methods may be called from any thread; each returns a concurrent.futures.Future that the
decode loop (decode_loop.py), the only thread that touches the model and a session's state, answers.
The loop calls the methods below `# The decode loop's side`. The model's work is the runner's
(runner.py); the session's keys/values and reservation are the KV pool's (kv_pool.py)."""
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from common.errors import FieldError
from .backend import AdvanceResult, Pruned, SequenceUpdate, Started
from .branching import fork_reservation
from .detokenizer import IncrementalDetokenizer
from .kv_pool import KVPool
from .request_plan import SessionRequest


class SessionCancelled(RuntimeError):
    """The session was closed (its client went away) before the answer was ready."""


@dataclass
class _Sequence:
    detokenizer: IncrementalDetokenizer  # has taken every token already reported, the ending EOS excepted
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""
    finish_reported: bool = False  # the client was told how it ended (or ended it by a prune)

    def branch(self) -> "_Sequence":
        """A new sequence that continues this one's tokens and the text already reported."""
        return _Sequence(self.detokenizer.branch(), list(self.tokens))


@dataclass
class _Advance:
    future: Future
    target: int
    reporting: list[int]
    began: float
    result: AdvanceResult = field(default_factory=AdvanceResult)
    pending: list[torch.Tensor] = field(default_factory=list)  # sampled, not yet copied to the host


def _running_future() -> Future:
    # Running futures cannot be cancelled, so the loop may always set their result; a caller that
    # stops waiting closes the session instead.
    future = Future()
    future.set_running_or_notify_cancel()
    return future


class Session:
    """Decode all rows of one request together, keep keys/values only for rows still useful.

    Finished rows stay in the batch (their samples are ignored) until a compaction, which a fixed
    rule on this session's rows alone triggers; a prune that rejects nothing changes nothing. So
    runs whose sequences finish alike see the same shapes and, in batch-invariant mode, a row's
    tokens depend neither on this session's other rows nor on other sessions."""

    def __init__(self, request: SessionRequest, tokenizer, eos_ids: set[int], pool: KVPool, commands):
        """`commands`: where the callers' commands go to run on the loop's thread (submit, close)."""
        self.pool, self.commands = pool, commands
        device = pool.decoder.device
        self.n, self.max_new_tokens, self.sampling = request.n, request.max_new_tokens, request.sampling
        self.prompt_ids = torch.tensor(request.prompt_ids, dtype=torch.long)
        self.prompt_length = len(request.prompt_ids)
        self.eos_ids = set(eos_ids) if request.stop_at_eos else set()
        self._eos_tensor = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=device)
        self.bytes_per_token = pool.bytes_per_token
        self.reservation_tokens = request.reservation_tokens  # the pool's budget (admission.Admission) keeps it
        self.initial_reservation_tokens = request.reservation_tokens  # what branches may grow back to
        self.admitted = False
        self.arrived = time.perf_counter()
        self.admitted_at = 0.0
        self.sequences = [_Sequence(IncrementalDetokenizer(tokenizer, skip_special_tokens=True))
                          for _ in range(self.n)]
        self.prefix: torch.Tensor | None = None  # the prompt's keys/values, shared by the rows (pool's)
        self.prefilled = 0  # prompt tokens prefilled so far
        self.cache = pool.new_rows()  # the rows' own keys/values (pool's)
        self.capacity = 0  # response tokens the rows can reach before their reservation is full (pool's)
        self.row_index = torch.arange(self.n, device=device)  # which sequence each row is
        self.row_running = torch.ones(self.n, dtype=torch.bool, device=device)
        self.last_tokens = torch.zeros(self.n, dtype=torch.long, device=device)
        self.position = 0  # response tokens sampled so far by every running row
        self.closed = False
        self._started = _running_future()
        self._advance: _Advance | None = None

    # Callers' side: any thread.

    def start(self) -> "Future[Started]":
        """Answered once the session is admitted, its prompt prefilled and every row's first token sampled."""
        return self._started

    def advance(self, until_tokens: int = 0, keep: list[int] = (), fork_from: list[int] = ()) -> "Future[AdvanceResult]":
        """Drop the running sequences not in `keep` (when given), branch one new sequence from each
        of `fork_from`, then decode until the running rows hold `until_tokens` tokens (0: until the
        reservation is full), every row has finished, or max_new_tokens is reached. One command of
        the loop: what the prune frees is still there for the branches."""
        future = _running_future()
        keep, fork_from = list(keep), list(fork_from)
        self.commands.submit(self, lambda: self._begin_advance(until_tokens, keep, fork_from, future), future)
        return future

    def prune(self, keep: list[int]) -> "Future[Pruned]":
        """Drop every running sequence not in `keep`; their memory goes back to the pool."""
        future = _running_future()
        self.commands.submit(self, lambda: future.set_result(self._prune(list(keep))), future)
        return future

    def close(self) -> None:
        """Free the session's memory at the loop's next turn and fail what is still pending."""
        if not self.closed:
            self.closed = True
            self.commands.close(self)

    @property
    def kv_cache_bytes(self) -> int:
        return self.pool.held_bytes(self)

    @property
    def reservation_bytes(self) -> int:
        return self.reservation_tokens * self.bytes_per_token

    @property
    def running_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.sequences) if not s.finish_reason]

    @property
    def unreported_indices(self) -> list[int]:
        """Running sequences and those whose end the client has not heard of yet: a row whose first
        token, sampled at prefill, ends it is reported by the next advance."""
        return [i for i, s in enumerate(self.sequences) if not s.finish_reported]

    # The decode loop's side.

    @property
    def rows(self) -> int:
        return self.row_index.shape[0]

    @property
    def alive_rows(self) -> int:
        return int(self.row_running.sum())

    def wants_step(self) -> bool:
        advance = self._advance
        return (advance is not None and self.position < min(advance.target, self.capacity)
                and bool(self.row_running.any()))

    def begin_decoding(self, first_tokens: torch.Tensor) -> None:
        """The prompt is prefilled and the rows allocated: take every row's first token, answer start()."""
        self._accept(first_tokens)
        self._commit([first_tokens])
        self._started.set_result(Started(
            n=self.n, prompt_tokens=self.prompt_length, kv_cache_budget_bytes=self.reservation_bytes,
            kv_cache_bytes=self.kv_cache_bytes, prefill_seconds=time.perf_counter() - self.admitted_at,
            capacity_tokens=self.capacity,
        ))

    def accept_step(self, tokens: torch.Tensor, step_seconds: float) -> int:
        """Take this session's rows' tokens of a decode step; returns the tokens that counted."""
        advance = self._advance
        decoded = self.alive_rows
        self._accept(tokens)
        advance.pending.append(tokens)
        result = advance.result
        result.decoded_tokens += decoded
        result.steps += 1
        result.step_seconds.append(step_seconds)
        result.step_rows.append(self.rows)
        return decoded

    def compact(self) -> None:
        """Drop the finished rows from the batch (their sequences already hold every token)."""
        self._commit(self._advance.pending)
        self._advance.pending = []
        self._keep_rows(self.row_running)

    def answer_advance_if_done(self) -> None:
        advance = self._advance
        if advance is None or self.wants_step():
            return
        self._advance = None
        self._commit(advance.pending)
        result = advance.result
        result.memory_full = (self.position >= self.capacity and self.position < advance.target
                              and bool(self.running_indices))
        result.decode_seconds = time.perf_counter() - advance.began
        result.updates = self._updates(advance.reporting)
        result.position, result.kv_cache_bytes, result.capacity_tokens = (
            self.position, self.kv_cache_bytes, self.capacity)
        advance.future.set_result(result)

    def fail_pending(self, error: BaseException) -> None:
        if not self._started.done():
            self._started.set_exception(error)
        if self._advance is not None:
            self._advance.future.set_exception(error)
            self._advance = None

    def _begin_advance(self, until_tokens: int, keep: list[int], fork_from: list[int], future: Future) -> None:
        if self._advance is not None or not self._started.done():
            raise FieldError("command", "one command at a time, after the session has started")
        began = time.perf_counter()
        prune_seconds = self._prune(keep).prune_seconds if keep else 0.0
        if fork_from:
            self._fork(fork_from)
        target = min(until_tokens or self.max_new_tokens, self.max_new_tokens)
        self._advance = _Advance(future, target, self.unreported_indices, began)
        self._advance.result.prune_seconds = prune_seconds

    def _fork(self, parents: list[int]) -> None:
        """Branch a new sequence (the next index) from each running sequence in `parents`: its row
        copies the parent's row of keys/values (the prompt's stay shared); finished rows go."""
        running = self.running_indices
        self.pool.grow(self, fork_reservation(
            parents, running, n=self.n, prompt_tokens=self.prompt_length, max_new_tokens=self.max_new_tokens,
            reservation_tokens=self.reservation_tokens, initial_reservation_tokens=self.initial_reservation_tokens,
            bytes_per_token=self.bytes_per_token, position=self.position))
        row_of = {index: row for row, index in enumerate(self.row_index.tolist())}
        first_new = len(self.sequences)
        self.sequences += [self.sequences[parent].branch() for parent in parents]
        device = self.row_index.device
        rows = torch.tensor([row_of[i] for i in running + parents], device=device)
        self._take_rows(rows, torch.tensor(running + list(range(first_new, len(self.sequences))), device=device))

    def _prune(self, keep: list[int]) -> Pruned:
        if self._advance is not None or not self._started.done():
            raise FieldError("command", "one command at a time, after the session has started")
        began = time.perf_counter()
        running = set(self.running_indices)
        unknown = sorted(set(keep) - running)
        if unknown:
            raise FieldError("keep", f"indices {unknown} are not running sequences of this session")
        rejected = running - set(keep)
        if rejected:
            for index in rejected:
                self.sequences[index].finish_reason = "rejected"
                self.sequences[index].finish_reported = True
            kept = torch.tensor([self.sequences[i].finish_reason == "" for i in self.row_index.tolist()])
            self._keep_rows(kept.to(self.row_index.device))
        return Pruned(len(self.running_indices), self.kv_cache_bytes, time.perf_counter() - began, self.capacity)

    def _accept(self, tokens: torch.Tensor) -> None:
        """Take one sampled token per row as the rows' next input."""
        self.last_tokens = tokens
        if self.eos_ids:
            self.row_running &= ~torch.isin(tokens, self._eos_tensor)
        self.position += 1

    def _keep_rows(self, keep_mask: torch.Tensor) -> None:
        """Keep only the masked rows in the batch (the pool frees the others' keys/values)."""
        keep = keep_mask.nonzero().flatten()
        self._take_rows(keep, self.row_index[keep])

    def _take_rows(self, rows: torch.Tensor, row_index: torch.Tensor) -> None:
        """The rows `rows` (indices, a row may come twice) become the batch, sequences `row_index`."""
        self.pool.take_rows(self, rows, used=max(self.position - 1, 0))
        self.last_tokens = self.last_tokens[rows]
        self.row_index = row_index
        self.row_running = self.row_running[rows]

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
        updates = []
        for index in indices:
            sequence = self.sequences[index]
            detokenizer = sequence.detokenizer
            body_end = len(sequence.tokens) - (sequence.finish_reason == "stop")
            new = sequence.tokens[detokenizer.token_count:body_end]
            delta = detokenizer.add(new)
            if sequence.finish_reason:
                delta += detokenizer.finish()
            sequence.finish_reported = bool(sequence.finish_reason)
            updates.append(SequenceUpdate(index, delta, len(sequence.tokens), sequence.finish_reason, new))
        return updates
