"""The scoring engine: one worker thread owns the model and runs Score requests from a bounded queue,
those that arrive within a short window together, under the scorer's token budget. A request whose
caller goes away or whose deadline passes stops at the next forward pass."""
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

from common import metrics as common_metrics
from common.chat import PromptError
from common.errors import Cancelled, DeadlineExceeded, FieldError, Overloaded, TokenizerMismatch
from common.retry_hint import RetryHint
from common.tokenizer_fingerprint import tokenizer_fingerprint
from . import metrics
from .limits import InputLimits
from .scorers import Item, Request, Scored
from .sessions import SessionCache

log = logging.getLogger(__name__)


class ScoreFuture(Future):
    """A Score request's result. Cancelling it marks it `abandoned` even once the model works on it (a
    running Future itself cannot be cancelled), and the rest of its work is then dropped;
    asyncio.wrap_future cancels it when the task awaiting it is cancelled."""

    def __init__(self):
        super().__init__()
        self.abandoned = threading.Event()

    def cancel(self) -> bool:
        self.abandoned.set()
        return super().cancel()


@dataclass
class _Job:
    request: Request
    future: ScoreFuture
    enqueued: float
    deadline: float | None  # time.monotonic() value

    def abandoned(self) -> bool:
        return self.future.abandoned.is_set() or self.expired()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


_STOP = object()


class ScoringEngine:
    def __init__(self, scorer, *, sessions: SessionCache, limits: InputLimits | None = None,
                 batch_window_seconds: float = 0.005, max_queued: int = 64):
        self.scorer, self.sessions = scorer, sessions
        self.limits = limits or InputLimits(max_context=scorer.max_context)
        self.batch_window_seconds, self.max_queued = batch_window_seconds, max_queued
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.queued = 0
        self.retry_hint = RetryHint(initial_seconds=0.05, floor_seconds=batch_window_seconds)
        self.tokenizer_fingerprint = tokenizer_fingerprint(scorer.tokenizer)
        self._vocabulary_size = len(scorer.tokenizer)
        self._worker = threading.Thread(target=self._work, name="reward-scoring", daemon=True)
        self._worker.start()

    def check_tokenizer(self, tokenizer: str, field: str) -> None:
        """Raise TokenizerMismatch unless token ids in `tokenizer` (a fingerprint) are this scorer's."""
        if tokenizer != self.tokenizer_fingerprint:
            raise TokenizerMismatch(field, tokenizer, self.tokenizer_fingerprint)

    def _check_token_ids(self, items: list[Item]) -> None:
        for index, item in enumerate(items):
            outside = next((t for t in item.token_ids if t >= self._vocabulary_size), None)
            if outside is not None:
                raise FieldError(f"items[{index}].token_ids", f"token id {outside} is outside the vocabulary "
                                                              f"of {self._vocabulary_size} tokens")

    def submit(self, messages: list[dict], items: list[Item], *, session: str = "",
               deadline: float | None = None, tokenizer: str = "") -> Future:
        """Queue a request; the future resolves to its `Scored`. With `tokenizer` (a fingerprint) the
        items are token ids, refused with TokenizerMismatch when it is not this scorer's. Raises at once
        FieldError for bad input and Overloaded (with a retry hint) when the queue is full; the future
        fails with DeadlineExceeded when `deadline` (a time.monotonic() value) passes before the request
        is scored. Cancelling the future stops the request's model work at the next forward pass."""
        self.limits.check_shape(len(messages), len(items))
        if tokenizer:
            self.check_tokenizer(tokenizer, "tokenizer")
            self._check_token_ids(items)
        self.limits.check_text(messages, [item.response for item in items])
        if session:
            seen = set()
            for index, item in enumerate(items):
                if item.candidate in seen:
                    raise FieldError(f"items[{index}].candidate", f"candidate {item.candidate} appears twice")
                seen.add(item.candidate)
        # A full queue refuses before tokenizing, so overload costs the least work.
        self._admit()
        try:
            if tokenizer and not self.scorer.reads_token_ids:
                # Decoded as the generator writes its text: special tokens skipped, spaces as they are.
                texts = self.scorer.tokenizer.batch_decode([i.token_ids for i in items], skip_special_tokens=True,
                                                           clean_up_tokenization_spaces=False)
                items = [Item(text, i.complete, i.candidate) for i, text in zip(items, texts)]
            try:
                prompt, bodies = self.scorer.tokenize(messages, items)
            except PromptError as error:
                raise FieldError("messages", str(error)) from None
            self.limits.check_tokens(len(prompt), [len(b) for b in bodies])
        except Exception:
            self._count_queued(-1)
            raise
        job = _Job(Request(prompt, bodies, [i.candidate for i in items], session), ScoreFuture(), time.monotonic(),
                   deadline)
        job.request.abandoned = job.abandoned
        self._queue.put(job)
        return job.future

    def _admit(self) -> None:
        with self._lock:
            if self.queued >= self.max_queued:
                common_metrics.ADMISSION_REJECTED.labels(metrics.SERVICE).inc()
                retry = self.retry_hint.seconds(queued=self.queued, running=0, pieces=self.queued, parallel=1)
                raise Overloaded(f"{self.queued} requests are waiting for the reward model; retry in {retry:.1f} s",
                                 retry)
            self.queued += 1
            common_metrics.ADMISSION_QUEUED.labels(metrics.SERVICE).set(self.queued)

    def _count_queued(self, change: int) -> None:
        with self._lock:
            self.queued += change
            common_metrics.ADMISSION_QUEUED.labels(metrics.SERVICE).set(self.queued)

    def open_session(self) -> str:
        """A new session's id, for `submit`; what it keeps is freed by `release`."""
        session = uuid.uuid4().hex
        self.sessions.open(session)
        metrics.observe_cache(self.sessions)
        return session

    def release(self, session: str) -> int:
        """Free what is kept for a session and close it; returns the bytes freed."""
        freed = self.sessions.release(session)
        metrics.observe_cache(self.sessions)
        return freed

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join()

    def _collect(self) -> list[_Job] | None:
        """The next batch: the first request, and those that arrive within the batching window after it."""
        first = self._queue.get()
        if first is _STOP:
            return None
        jobs = [first]
        closes = time.monotonic() + self.batch_window_seconds
        while (left := closes - time.monotonic()) > 0:
            try:
                job = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)
                break
            jobs.append(job)
        return jobs

    def _work(self) -> None:
        while (jobs := self._collect()) is not None:
            self._run(jobs)
            metrics.observe_cache(self.sessions)

    def _run(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        self._count_queued(-len(jobs))
        live = []
        for job in jobs:
            common_metrics.ADMISSION_WAIT_SECONDS.labels(metrics.SERVICE).observe(now - job.enqueued)
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller went away
            if job.expired():
                job.future.set_exception(DeadlineExceeded("the deadline passed while the request waited"))
                continue
            live.append(job)
        if not live:
            return
        began = time.perf_counter()
        try:
            results, pass_sizes = self.scorer.score([j.request for j in live], self.sessions)
        except Exception as error:
            log.exception("scoring %d requests failed", len(live))
            for job in live:
                job.future.set_exception(error)
            return
        seconds = time.perf_counter() - began
        self.retry_hint.observe(seconds / len(live))
        metrics.observe_batch([r for r in results if r is not None], pass_sizes, seconds)
        for job, result in zip(live, results):
            if result is not None:
                job.future.set_result(Scored(result.scores, result.tokens, seconds))
                continue
            metrics.ABANDONED.labels(metrics.SERVICE).inc()
            job.future.set_exception(DeadlineExceeded("the deadline passed while the request was scored")
                                     if job.expired() else Cancelled("the caller went away"))
