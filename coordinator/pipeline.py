"""One request, start to end: open a generator session, decode to each decision point, score,
rank, prune, and return the best finished candidate. The decisions come from `schedule`; the
generator and reward model are reached through two small async ports, so the same pipeline runs
over gRPC (coordinator.clients) or, in the benchmark, in process (bench.shared.ports).

With `score_ahead_tokens`, the candidates' text is also sent to the reward model every that many
tokens between decision points, while decoding goes on: the reward stream then already holds
their keys/values, and a decision point waits only for the tokens decoded since the last send. The
decisions are the same either way; only when the reward model's work happens changes.

With `refill`, each decision point also names branches of the best running survivors
(coordinator.refill) for the rows its rejections freed; they ride on the next advance with the
keep list, and a branch's text begins with its parent's text at the fork."""
import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from opentelemetry import trace

from common import errors
from specrej.v1 import coordinator_pb2 as pb, generator_pb2, reward_pb2
from . import refill, schedule
from .request import Plan

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class GeneratorPort(Protocol):
    """One generator session."""

    async def start(self, start: generator_pb2.StartSession) -> generator_pb2.SessionStarted: ...
    async def advance(self, until_tokens: int, keep: list[int], fork_from: list[int]) -> generator_pb2.Advanced:
        """Decode to `until_tokens`; a non-empty `keep` first drops every other running candidate,
        then each index in `fork_from` gets a branch (the session's next indices, in order)."""


class RewardPort(Protocol):
    """The reward model, for one request: each call's texts (and token ids, in the generator's
    tokenizer that the request names) extend those of the previous call, one call at a time, and a
    candidate missing from a call is not scored again. The port sends the ids where the reward model
    shares that tokenizer, else the text."""

    async def score(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse: ...


@dataclass
class _Candidate:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # the response's tokens, end of sequence left out
    num_tokens: int = 0
    finish_reason: str = ""
    inherited_tokens: int = 0  # a branch's tokens from its parent, decoded once, by the parent

    @property
    def finished(self) -> bool:
        return bool(self.finish_reason)

    @property
    def decoded_tokens(self) -> int:
        """Tokens decoded for this candidate alone; an initial one sampled its first at prefill."""
        return max(self.num_tokens, 1) - self.inherited_tokens


@dataclass
class _Clock:
    began: float = field(default_factory=time.perf_counter)
    generate: float = 0.0
    score: float = 0.0
    prefill: float = 0.0


class _ScoreAhead:
    """Sends the candidates' text so far to the reward model in the background. One call at a time
    (a request's scoring rounds go one after another); a newer text waiting to go replaces an older one.
    Its scores are not used and its failures are not the request's: the decision point's own call
    reads whatever these did not, and reports the reward model's errors."""

    def __init__(self, score):
        self._score = score
        self._waiting: reward_pb2.ScoreRequest | None = None
        self._task: asyncio.Task | None = None

    def offer(self, request: reward_pb2.ScoreRequest) -> None:
        self._waiting = request
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send_waiting())

    async def _send_waiting(self) -> None:
        while self._waiting is not None:
            request, self._waiting = self._waiting, None
            try:
                await self._score(request)
            except errors.ServiceError as error:
                log.info("scoring ahead failed (%s); the decision point reads those tokens itself", error)

    async def settle(self) -> None:
        """Drop what has not been sent and wait for the call in flight."""
        self._waiting = None
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        self._waiting = None
        if self._task is not None:
            self._task.cancel()


class Pipeline:
    def __init__(self, plan: Plan, generator: GeneratorPort, reward: RewardPort, score_ahead_tokens: int = 0):
        self.plan, self.generator, self.reward = plan, generator, reward
        self.score_ahead_tokens = score_ahead_tokens
        self.clock = _Clock()
        self.rounds: list[pb.Round] = []
        self.scored_tokens = 0
        self.started: generator_pb2.SessionStarted | None = None
        self.candidates: dict[int, _Candidate] = {}
        self._keep: list[int] = []  # running candidates a decision point kept, for the next advance
        self._fork_from: list[int] = []  # parents of the branches a decision point made, likewise

    @property
    def decoded_tokens(self) -> int:
        """Tokens decoded so far over all candidates; each sampled its first token at prefill."""
        return sum(c.decoded_tokens for c in self.candidates.values())

    async def _timed_generator(self, call, *args):
        began = time.perf_counter()
        try:
            return await call(*args)
        finally:
            self.clock.generate += time.perf_counter() - began

    def _score_request(self, candidates: list[_Candidate]) -> reward_pb2.ScoreRequest:
        return reward_pb2.ScoreRequest(
            messages=self.plan.messages, tokenizer=self.started.tokenizer,
            items=[reward_pb2.ScoreItem(response=c.text, complete=c.finish_reason == "stop", candidate=c.index,
                                        token_ids=c.token_ids) for c in candidates],
        )

    async def _score_counted(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
        response = await self.reward.score(request)
        self.scored_tokens += response.scored_tokens
        return response

    async def _scores(self, candidates: list[_Candidate]) -> list[float]:
        began = time.perf_counter()
        with tracer.start_as_current_span("score", attributes={"specrej.candidates": len(candidates)}):
            response = await self._score_counted(self._score_request(candidates))
        self.clock.score += time.perf_counter() - began
        return list(response.scores)

    def _advance_to(self, position: int, stop: int) -> int:
        """Where the next advance ends: the decision point `stop` (0 = where the cache is full) or,
        scoring ahead, the next multiple of score_ahead_tokens before it."""
        ahead = self.score_ahead_tokens
        if not ahead:
            return stop
        return min(stop or self.plan.max_new_tokens, (position // ahead + 1) * ahead)

    async def _waited_for_scoring(self, ahead: _ScoreAhead) -> None:
        began = time.perf_counter()
        await ahead.settle()
        self.clock.score += time.perf_counter() - began

    async def start(self) -> None:
        """Open the generator session: prefill and first tokens. May wait for a free session."""
        plan = self.plan
        with tracer.start_as_current_span("prefill"):
            self.started = await self._timed_generator(self.generator.start, generator_pb2.StartSession(
                messages=plan.messages, n=plan.n, max_new_tokens=plan.max_new_tokens,
                sampling=generator_pb2.SamplingParams(temperature=plan.temperature, top_p=plan.top_p,
                                                      top_k=plan.top_k, seed=plan.seed),
                min_tokens_before_full=plan.min_tokens_before_full,
            ))
        self.clock.prefill = self.started.prefill_seconds
        self.candidates = {i: _Candidate(i) for i in range(self.started.n)}

    async def events(self) -> AsyncIterator[pb.Round | pb.GenerateResponse]:
        """After `start()`: yields a Round after each decision point, then the GenerateResponse."""
        plan = self.plan
        live = dict(self.candidates)
        position = 1
        ahead = _ScoreAhead(self._score_counted)
        round_began = (self.clock.generate, self.clock.score)
        try:
            while True:
                stop = plan.schedule.next_stop(position, plan.max_new_tokens)
                with tracer.start_as_current_span("decode"):
                    advanced = await self._timed_generator(self.generator.advance, self._advance_to(position, stop),
                                                           self._keep, self._fork_from)
                self._keep, self._fork_from = [], []
                position = advanced.position
                for update in advanced.sequences:
                    candidate = self.candidates[update.index]
                    candidate.text += update.text_delta
                    candidate.token_ids += update.token_ids
                    candidate.num_tokens = update.num_tokens
                    candidate.finish_reason = update.finish_reason
                running = [c for c in live.values() if not c.finished]
                if not running:
                    break
                if not advanced.sequences:
                    # The generator holds none of these running: asking again would spin forever.
                    raise RuntimeError(f"the generator reported none of the {len(running)} running candidates")
                if schedule.cannot_grow(len(running), advanced.memory_full, advanced.steps):
                    running[0].finish_reason = "length"
                    break
                if not advanced.memory_full and (not stop or position < stop):
                    ahead.offer(self._score_request(list(live.values())))
                    continue
                await self._waited_for_scoring(ahead)
                with tracer.start_as_current_span("decision point", attributes={"specrej.position": position}):
                    record = await self._decide(live, advanced, position, round_began)
                round_began = (self.clock.generate, self.clock.score)
                yield record
            await self._waited_for_scoring(ahead)
            yield await self._result(live)
        finally:
            ahead.cancel()

    async def _decide(self, live: dict, advanced, position: int, round_began) -> pb.Round:
        order = list(live.values())
        ranked = [schedule.Ranked(c.index, s, c.finished) for c, s in zip(order, await self._scores(order))]
        decision = schedule.decide(ranked, self.plan.rejection_rate, memory_full=advanced.memory_full)
        for loser in decision.rejected:
            candidate = live.pop(loser.index)
            if not candidate.finished:
                candidate.finish_reason = "rejected"
        if any(not c.finished for c in decision.rejected):
            # The prune rides on the next advance: one round trip per decision point.
            self._keep = [c.index for c in decision.kept if not c.finished]
        if self.plan.refill:
            self._branch(live, [c.index for c in decision.kept if not c.finished])
        record = pb.Round(
            token_position=position, active_before=len(ranked), kept=len(decision.kept),
            rejected=len(decision.rejected), cutoff_score=decision.cutoff_score,
            finished_kept=sum(c.finished for c in decision.kept),
            trigger=schedule.MEMORY if advanced.memory_full else self.plan.schedule.trigger,
            generate_seconds=self.clock.generate - round_began[0], score_seconds=self.clock.score - round_began[1],
            branched=len(self._fork_from),
        )
        self.rounds.append(record)
        return record

    def _branch(self, live: dict, survivors: list[int]) -> None:
        """Branches of the running `survivors` (best first) for the next advance to make: new live
        candidates with the next indices, each starting from its parent's text and tokens."""
        self._fork_from = refill.branch_parents(survivors, self.started.n)
        for parent in map(self.candidates.__getitem__, self._fork_from):
            branch = _Candidate(len(self.candidates), parent.text, list(parent.token_ids), parent.num_tokens,
                                inherited_tokens=parent.num_tokens)
            self.candidates[branch.index] = live[branch.index] = branch

    async def _result(self, live: dict) -> pb.GenerateResponse:
        finalists = sorted(live.values(), key=lambda c: c.index)
        scores = await self._scores(finalists)
        ranked = schedule.rank([schedule.Ranked(c.index, s, True) for c, s in zip(finalists, scores)])
        candidates = self.candidates
        chosen = [
            pb.Candidate(index=r.index, text=candidates[r.index].text, score=r.score,
                         num_tokens=candidates[r.index].num_tokens, finish_reason=candidates[r.index].finish_reason)
            for r in ranked[: self.plan.return_top]
        ]
        latency = time.perf_counter() - self.clock.began
        return pb.GenerateResponse(best=chosen[0], ranked=chosen, stats=pb.Stats(
            initial_n=self.started.n, rounds=self.rounds,
            generated_tokens=sum(c.num_tokens - c.inherited_tokens for c in candidates.values()),
            prompt_tokens=self.started.prompt_tokens, latency_seconds=latency,
            generate_seconds=self.clock.generate, score_seconds=self.clock.score,
            coordinator_seconds=max(0.0, latency - self.clock.generate - self.clock.score),
            scored_tokens=self.scored_tokens, seed=self.plan.seed, rejection_rate=self.plan.rejection_rate,
            method=self.plan.method, prefill_seconds=self.clock.prefill,
            kv_cache_budget_bytes=self.started.kv_cache_budget_bytes,
        ))
