"""The one thread that owns the model and decodes every session's rows together.

Each turn: run the commands callers queued (advance, prune, close), take the sessions admission
let in, prefill one chunk of the oldest prompt still prefilling, then one decode step over the
running rows of every session that has not reached its target, and answer each session whose
advance is done. Sessions join and leave between steps; one answer never waits for another's."""
import collections
import logging
import threading
import time

import torch

from . import metrics
from .admission import Admission
from .decoder import CausalDecoder, Segment
from .session import Session, SessionCancelled

log = logging.getLogger(__name__)


class DecodeLoop:
    def __init__(self, decoder: CausalDecoder, admission: Admission, prefill_chunk_tokens: int):
        self.decoder, self.admission = decoder, admission
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._commands: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._prefilling: list[Session] = []
        self._decoding: list[Session] = []
        self._live: set[Session] = set()
        self._live_lock = threading.Lock()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="generator-decode-loop", daemon=True)
        self.thread.start()

    # Callers' side: any thread.

    def open(self, session: Session) -> None:
        """Admit or queue a new session; raises Overloaded when the queue is full."""
        self.admission.enqueue(session)
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
        if self.decoder.device.type == "cuda":
            torch.cuda.set_device(self.decoder.device)
        with torch.inference_mode():
            while not self._stopped:
                self._wake.clear()  # before reading the queues: a later submit() wakes the wait below
                self._run_commands()
                self._prefilling += self.admission.take_admitted()
                worked = self._prefill()
                worked = self._decode() or worked
                for session in list(self._decoding):
                    self._guarded([session], session.answer_advance_if_done)
                if not worked:
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

    def _prefill(self) -> bool:
        if not self._prefilling:
            return False
        session = self._prefilling[0]
        if self._guarded([session], session.prefill_next_chunk, self.prefill_chunk_tokens):
            self._prefilling.remove(session)
            self._decoding.append(session)
        return True

    def _decode(self) -> bool:
        """One step over the rows of every session that wants one; False when none does."""
        stepping = [s for s in self._decoding if s.wants_step()]
        if not stepping:
            return False
        began = time.perf_counter()
        segments, offset = [], 0
        for session in stepping:
            segments.append(Segment(offset, session.rows, session.prefix, session.cache, session.position - 1))
            offset += session.rows
        device, padded = self.decoder.device, self.decoder.padded_rows(offset)
        tokens = torch.zeros(padded, dtype=torch.long, device=device)
        positions = torch.zeros(padded, dtype=torch.long, device=device)
        for session, segment in zip(stepping, segments):
            rows = slice(segment.offset, segment.offset + segment.rows)
            tokens[rows] = session.last_tokens
            positions[rows] = session.prompt_length + segment.slot
        logits = self._guarded(stepping, self.decoder.decode_step, tokens, positions, segments)
        if logits is None:
            return True
        seconds = time.perf_counter() - began
        decoded = 0
        for session, segment in zip(stepping, segments):
            rows = logits[segment.offset: segment.offset + segment.rows]
            decoded += self._guarded([session], session.accept_step, rows, seconds) or 0
        metrics.DECODE_STEP_SECONDS.labels(metrics.SERVICE).observe(time.perf_counter() - began)
        metrics.BATCH_SIZE.labels(metrics.SERVICE).observe(offset)
        metrics.TOKENS.labels(metrics.SERVICE).inc(decoded)
        return True

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
        self.admission.leave(session)
        for group in (self._prefilling, self._decoding):
            if session in group:
                group.remove(session)
        session.release()
        session.fail_pending(SessionCancelled("the session was closed"))
        with self._live_lock:
            self._live.discard(session)
        if self.decoder.device.type == "cuda":
            # Hand freed KV memory back so other processes and the budget see it.
            torch.cuda.empty_cache()
