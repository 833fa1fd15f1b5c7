"""The one thread that owns the model and decodes every session's rows together.

Each turn: run the commands callers queued (advance, prune, close); schedule (scheduler.py: which
session prefills a chunk, which sessions step); execute (runner.py: the prefill chunk, then one
decode step over the running rows of every session that has not reached its target); update (each
session takes its tokens, compacts when the scheduler says so, and is answered when its advance is
done). Sessions join and leave between steps; one answer never waits for another's."""
import collections
import logging
import threading
import time

import torch

from . import metrics
from .kv_pool import KVPool
from .runner import ModelRunner
from .scheduler import Scheduler
from .session import Session, SessionCancelled

log = logging.getLogger(__name__)


class DecodeLoop:
    def __init__(self, runner: ModelRunner, pool: KVPool, scheduler: Scheduler, prefill_chunk_tokens: int):
        self.runner, self.pool, self.scheduler = runner, pool, scheduler
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._commands: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._live: set[Session] = set()
        self._live_lock = threading.Lock()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="generator-decode-loop", daemon=True)
        self.thread.start()

    # Callers' side: any thread.

    def open(self, session: Session) -> None:
        """Admit or queue a new session; raises Overloaded when the queue is full."""
        self.pool.admission.enqueue(session)
        with self._live_lock:
            self._live.add(session)
        self._wake.set()

    def submit(self, session: Session, command, future) -> None:
        """Run `command()` on the loop's thread; an exception it raises fails `future`."""
        self._commands.append((session, command, future))
        self._wake.set()

    def close(self, session: Session) -> None:
        self._commands.append((session, lambda: self._drop(session), None))
        self._wake.set()

    def sessions(self) -> list[Session]:
        """Sessions opened and not yet freed."""
        with self._live_lock:
            return list(self._live)

    def stop(self) -> None:
        """End the loop; what sessions still wait for fails with SessionCancelled."""
        self._stopped = True
        self._wake.set()
        self.thread.join()
        for session in self.sessions():
            session.fail_pending(SessionCancelled("the generator stopped"))

    # The loop's own thread.

    def _run(self) -> None:
        if self.runner.decoder.device.type == "cuda":
            torch.cuda.set_device(self.runner.decoder.device)
        with torch.inference_mode():
            while not self._stopped:
                self._wake.clear()  # before reading the queues: a later submit() wakes the wait below
                self._run_commands()
                turn = self.scheduler.schedule()
                if turn.prefill is not None:
                    self._prefill(turn.prefill)
                if turn.step:
                    self._decode(turn.step)
                for session in list(self.scheduler.decoding):
                    self._guarded([session], session.answer_advance_if_done)
                if turn.idle:
                    self._wake.wait()

    def _run_commands(self) -> None:
        while self._commands:
            session, command, future = self._commands.popleft()
            if future is not None and session.closed:
                future.set_exception(SessionCancelled("the session was closed"))
                continue
            try:
                command()
            except Exception as error:
                if future is None:
                    log.exception("closing a session failed")
                else:
                    future.set_exception(error)

    def _prefill(self, session: Session) -> None:
        if self._guarded([session], self._prefill_chunk, session):
            self.scheduler.prefilled(session)

    def _prefill_chunk(self, session: Session) -> bool:
        """The session's next prompt chunk; after its last, its rows allocated and their first tokens
        taken, and True."""
        if session.prefix is None:
            self.pool.allocate_prompt(session)
        end = min(session.prompt_length, session.prefilled + (self.prefill_chunk_tokens or session.prompt_length))
        logits = self.runner.prefill(session, end)
        session.prefilled = end
        if end < session.prompt_length:
            return False
        self.pool.allocate_rows(session, session.n)
        session.begin_decoding(self.runner.sample(session, logits.expand(session.n, -1)))
        return True

    def _decode(self, stepping: list[Session]) -> None:
        """One step over the rows of every session that wants one."""
        began = time.perf_counter()
        tokens = self._guarded(stepping, self.runner.decode_step, stepping)
        if tokens is None:
            return
        seconds = time.perf_counter() - began
        decoded = 0
        for session, session_tokens in zip(stepping, tokens):
            decoded += self._guarded([session], session.accept_step, session_tokens, seconds) or 0
            if not session.closed and self.scheduler.should_compact(session):
                self._guarded([session], session.compact)
        metrics.DECODE_STEP_SECONDS.labels(metrics.SERVICE).observe(time.perf_counter() - began)
        metrics.BATCH_SIZE.labels(metrics.SERVICE).observe(sum(session.rows for session in stepping))
        metrics.TOKENS.labels(metrics.SERVICE).inc(decoded)

    def _guarded(self, sessions: list[Session], work, *args):
        """`work(*args)`; if it fails, the sessions involved fail and are freed, the loop goes on."""
        try:
            return work(*args)
        except Exception as error:
            log.exception("model work failed for %d session(s)", len(sessions))
            for session in sessions:
                session.fail_pending(error)
                session.closed = True
                self._drop(session)
            return None

    def _drop(self, session: Session) -> None:
        self.scheduler.remove(session)
        self.pool.release(session)
        session.fail_pending(SessionCancelled("the session was closed"))
        with self._live_lock:
            self._live.discard(session)
