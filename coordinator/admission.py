"""Admission at the coordinator: at most `max_concurrent` requests run, at most `max_queued` wait
for one of them to finish, and any more are turned away at once with Overloaded
(RESOURCE_EXHAUSTED and a retry hint), so an overloaded coordinator answers fast instead of
piling up requests that would all miss their deadlines."""
import asyncio
import contextlib
import time

from common import metrics
from common.errors import Overloaded
from common.retry_hint import RetryHint


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int, service: str):
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("max_concurrent must be at least 1 and max_queued at least 0")
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        self.service = service
        self.retry_hint = RetryHint()
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        # Tokens the waiting and the running requests are to decode, for the retry hint.
        self.waiting_work = self.running_work = 0

    @contextlib.asynccontextmanager
    async def slot(self, work: int = 1):
        """Hold one of the running slots for the block; wait in the queue for it if need be. `work`:
        the tokens the request is to decode, as far as is known before it starts."""
        began = time.perf_counter()
        if self._slots.locked() and self.waiting >= self.max_queued:
            metrics.ADMISSION_REJECTED.labels(self.service).inc()
            raise Overloaded(f"the coordinator is busy: {self.max_concurrent} requests running and "
                             f"{self.waiting} waiting; retry later",
                             retry_after_seconds=self.retry_hint.seconds(
                                 queued=self.waiting_work, running=self.running_work,
                                 pieces=self.waiting + self.max_concurrent, parallel=self.max_concurrent))
        self.waiting += 1
        self.waiting_work += work
        metrics.ADMISSION_QUEUED.labels(self.service).inc()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            self.waiting_work -= work
            metrics.ADMISSION_QUEUED.labels(self.service).dec()
        admitted = time.perf_counter()
        self.running_work += work
        metrics.ADMISSION_WAIT_SECONDS.labels(self.service).observe(admitted - began)
        try:
            yield
        finally:
            self._slots.release()
            self.running_work -= work
            self.retry_hint.observe(time.perf_counter() - admitted, work)
