"""The paired experiment: Speculative Rejection against live Best-of-n0 from the same initial candidates.

The generator samples a sequence's tokens as a pure function of (seed, sequence index, position),
so Best-of-n0 with a run's seed completes exactly the n0 candidates that Speculative Rejection
starts from. On one pair (prompt, seed) the two methods therefore differ only by what rejection
did: whether it kept Best-of-n0's winner, what reward it lost or (by luck) gained, and what it
saved. Every variant (schedule, rejection rate, fixed or adaptive rule) runs on the same pairs,
and since Best-of-n0's choice and tokens are the same every time, so is its side of each pair.

Only its time is not: the runs of one prompt and seed are timed together, Best-of-n0 running right
before or right after the variants' SR runs (the order alternating from one prompt and seed to the
next), so a slow drift of the machine moves both sides of a wall ratio alike. SR's reward calls are recorded: at each decision point,
every live candidate's partial reward, whether it had finished and whether it was kept; the pair's
Best-of-n0 run returns every candidate's final reward, so partial and final rewards of the very
same candidates can be compared. Pairs journaled before runs were timed together (an SR run alone,
against one Best-of-n0 run per prompt and seed) are read back and marked so.

A pool of at least 4 x n0 complete samples per prompt gives the Best-of-N curve on which mean rewards
are placed (`bench/paired/summary.py`): the Best-of-n0 runs' own candidates (one seed's are
independent of another's) and fresh samples with seeds no run uses. Each sample's run seed is kept,
so that a pair is placed on a curve without its own seed's candidates.
"""
from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from bench.shared.config import BenchConfig, Schedule
from bench.shared.journal import Journal
from bench.shared.prompts import Prompt
from bench.shared.records import Pool
from bench.shared.requests import build_pool, request, schedule_arguments
from specrej.v1 import coordinator_pb2 as pb

JOURNAL_NAME = "paired-journal.jsonl"  # in the run's output folder, beside results.json
POOL_FACTOR = 4  # pools hold at least this many times n0, so Best-of-n0's curve is well estimated


@dataclass(frozen=True)
class Variant:
    """One way of running Speculative Rejection: where it decides and how many it rejects."""

    schedule: str
    rejection_rate: float
    adaptive: bool = False  # rejection_rate is then the least fraction rejected
    refill: bool = False  # the rows a decision point frees get branches of the best survivors

    @property
    def label(self) -> str:
        rule = f"adaptive ≥{self.rejection_rate:g}" if self.adaptive else f"α={self.rejection_rate:g}"
        return f"{self.schedule}, {rule}" + (", refill" if self.refill else "")


@dataclass(frozen=True)
class Outcome:
    """What one run returned and cost."""

    index: int  # the chosen candidate's index: among the initial n0, or from n0 on a branch
    text: str
    reward: float
    decoded_tokens: int
    scored_tokens: int
    wall_seconds: float
    generate_seconds: float
    score_seconds: float
    prompt_tokens: int
    decision_points: list[int] = field(default_factory=list)
    survivors_per_round: list[int] = field(default_factory=list)
    started: str = ""  # UTC, ISO 8601; empty in units journaled before runs were timestamped
    ended: str = ""
    # SR: per decision point, {"token_position", "candidates": [[index, partial reward, finished, kept], ...]}
    partial_scores: list[dict] = field(default_factory=list)
    candidate_rewards: list[float] = field(default_factory=list)  # Best-of-n0: final reward by candidate index


@dataclass(frozen=True)
class Pair:
    """Speculative Rejection (one variant) and Best-of-n0 on one prompt and seed."""

    prompt_id: str
    seed: int
    n0: int
    variant: Variant
    sr: Outcome
    bon: Outcome
    reward_scorer: str = ""
    timed_together: bool = False  # Best-of-n0 ran right before or after SR (else once, shared by variants)
    sr_first: bool | None = None

    @property
    def same_index(self) -> bool:
        return self.sr.index == self.bon.index

    @property
    def same_text(self) -> bool:
        return self.sr.text == self.bon.text


@dataclass
class PairedResults:
    pairs: list[Pair]
    pools: list[Pool]
    max_new_tokens: int
    kv_budget_bytes: int  # one generator's KV-cache budget, for the candidates that fit one device
    kv_bytes_per_token: int
    metadata: dict = field(default_factory=dict)
    # pool_seeds[prompt_id][i]: the run seed whose Best-of-n0 candidate pool sample i is; 0 for fresh samples
    pool_seeds: dict[str, list[int]] = field(default_factory=dict)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class _RecordingCalls:
    """One request's reward calls, each call's candidates and scores noted as they pass."""

    def __init__(self, calls, log: list):
        self.calls, self.log = calls, log

    async def __aenter__(self) -> "_RecordingCalls":
        self.inner = await self.calls.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self.calls.__aexit__(*exc)

    async def score(self, request):
        response = await self.inner.score(request)
        self.log.append([(item.candidate, item.complete, score) for item, score in zip(request.items, response.scores)])
        return response


class _RecordingReward:
    def __init__(self, reward, log: list):
        self.reward, self.log = reward, log

    def for_request(self, *args):
        return _RecordingCalls(self.reward.for_request(*args), self.log)


@contextmanager
def recorded_reward_calls(backend):
    """For the runs inside: every reward call of the backend's requests, as [(candidate, complete, score)]."""
    log: list = []
    reward = backend.reward
    backend.reward = _RecordingReward(reward, log)
    try:
        yield log
    finally:
        backend.reward = reward


def partial_scores(calls: list, decision_points: list[int]) -> list[dict]:
    """Per decision point, its live candidates' partial rewards, finished or not, and which were kept.

    The pipeline scores the live candidates once per decision point and once at the end (it scores
    nothing ahead in the benchmark), so call k is decision point k, and a candidate is kept when the
    next call scores it again."""
    if len(calls) != len(decision_points) + 1:
        raise ValueError(f"{len(calls)} reward calls for {len(decision_points)} decision points")
    points = []
    for position, call, following in zip(decision_points, calls, calls[1:]):
        scored_again = {index for index, _, _ in following}
        points.append({"token_position": position,
                       "candidates": [[index, score, complete, index in scored_again] for index, complete, score in call]})
    return points


def outcome(response: pb.GenerateResponse, wall: float) -> Outcome:
    stats = response.stats
    return Outcome(
        index=response.best.index, text=response.best.text, reward=response.best.score,
        decoded_tokens=stats.generated_tokens, scored_tokens=stats.scored_tokens, wall_seconds=wall,
        generate_seconds=stats.generate_seconds, score_seconds=stats.score_seconds,
        prompt_tokens=stats.prompt_tokens, decision_points=[r.token_position for r in stats.rounds],
        survivors_per_round=[r.kept for r in stats.rounds],
    )


def variants(config: BenchConfig) -> list[Variant]:
    """A sweep around the first schedule and rate (the coordinator's default, in the presets): the
    first schedule at the first rate, then at the other rates, the other schedules at the first
    rate, then the adaptive rules and the refilled (branching) rates on the first schedule. One setting moves at a time, so each
    question (how many to reject, where to decide first, doubling or fixed intervals, fixed or
    adaptive) is answered on the same pairs, at a fraction of the runs of the whole grid."""
    first, *others = config.schedules
    alpha, *other_rates = config.rejection_rates
    return ([Variant(first.name, rate) for rate in (alpha, *other_rates)]
            + [Variant(schedule.name, alpha) for schedule in others]
            + [Variant(first.name, rate, adaptive=True) for rate in config.adaptive_rates]
            + [Variant(first.name, rate, refill=True) for rate in config.refill_rates])


def pool_target(config: BenchConfig) -> int:
    return max(config.pool_size, POOL_FACTOR * max(config.n))


def pairs_asked(config: BenchConfig, prompts: int) -> int:
    return prompts * config.seeds * len(config.n) * len(variants(config))


def jobs(config: BenchConfig, prompts: int) -> int:
    """Progress units: a pool per prompt, then per prompt, seed and n0 one Best-of-n0 and every variant's pair."""
    return prompts * (1 + config.seeds * len(config.n) * (1 + len(variants(config))))


def run_sr(backend, prompt: Prompt, config: BenchConfig, n0: int, seed: int, variant: Variant,
           schedule: Schedule) -> Outcome:
    arguments = schedule_arguments(schedule, n0)
    generate = request(prompt, config, method=pb.SPECULATIVE_REJECTION, n=n0, seed=seed,
                       rejection_rate=variant.rejection_rate, every_tokens=arguments["every_tokens"],
                       first_decision_tokens=arguments["first_decision_tokens"])
    generate.adaptive_rejection = variant.adaptive
    generate.refill = variant.refill
    started = _now()
    with recorded_reward_calls(backend) as calls:
        response, wall = backend.run(generate, memory_round_tokens=arguments["memory_round_tokens"],
                                     kv_budget_tokens=arguments["kv_budget_tokens"])
    run = outcome(response, wall)
    return replace(run, started=started, ended=_now(), partial_scores=partial_scores(calls, run.decision_points))


def run_bon(backend, prompt: Prompt, config: BenchConfig, n0: int, seed: int) -> dict:
    """Best-of-n0 with every candidate's score returned: its outcome (start and end times, every
    candidate's final reward by index), and its candidates as pool samples."""
    started = _now()
    response, wall = backend.run(request(prompt, config, method=pb.BEST_OF_N, n=n0, seed=seed, return_top=n0),
                                 memory_round_tokens=config.max_new_tokens)
    rewards = [0.0] * n0
    for candidate in response.ranked:
        rewards[candidate.index] = candidate.score
    run = replace(outcome(response, wall), started=started, ended=_now(), candidate_rewards=rewards)
    return {"outcome": asdict(run),
            "samples": {"scores": [c.score for c in response.ranked],
                        "decoded_tokens": [c.num_tokens for c in response.ranked],
                        "wall_seconds": [wall / len(response.ranked)] * len(response.ranked)}}


class PairedRun:
    """The paired experiment, unit by unit, each kept in `journal` as it ends: a run stopped at any
    point goes on from there when started again.

    A unit is a group: on one prompt, seed and n0, Best-of-n0 and every variant's SR, timed together
    (Best-of-n0 first on every other group, last on the others), so all of them meet the same state
    of the machine and Best-of-n0 runs once for them all. A prompt's pool is the candidates of its
    groups' Best-of-n0 at the largest n0 (seeds differ, so they are independent samples), topped up
    with a unit of fresh samples to max(pool size, 4 x largest n0).
    Journals of the earlier layout are read and carried on in it: a Best-of-n0 run per seed for the
    pool, then per variant a pair of SR and Best-of-n0 timed together (or an SR run alone, against
    that shared Best-of-n0, before pairs were timed); a variant added to a journal later runs in
    pairs too. Such pairs run variant after variant, each on every prompt with one seed before the
    next seed, so that a run stopped early has spread its pairs over the prompts (intervals resample
    prompts).
    A run stopped early still reports every pair its journal holds, whatever the variant.
    """

    def __init__(self, backend, prompts: Sequence[Prompt], config: BenchConfig, journal: Journal,
                 step: Callable[[str], None] = lambda _: None, stop_at: float | None = None):
        self.backend, self.prompts, self.config, self.journal = backend, prompts, config, journal
        self.step, self.stop_at = step, stop_at
        self.reward_scorer = str(journal.settings.get("reward", ""))
        self.schedules = {schedule.name: schedule for schedule in config.schedules}
        self.variants = variants(config)
        self.positions = {prompt.id: position for position, prompt in enumerate(prompts)}
        self.pool_target = pool_target(config)
        self.pools: dict[str, Pool] = {}
        self.pool_seeds: dict[str, list[int]] = {}
        self.pairs: list[Pair] = []
        self.complete = False
        self._stepped: set[str] = set()

    def run(self) -> "PairedRun":
        out_of_time = False
        order = 0
        for variant in self.variants:
            for seed in range(1, self.config.seeds + 1):
                for prompt in self.prompts:
                    for n0 in self.config.n:
                        try:
                            self.pairs.append(self._pair(prompt, seed, n0, variant, sr_first=order % 2 == 0))
                        except _OutOfTime:
                            out_of_time = True  # this pair waits for the next run; later ones may be in the journal
                        order += 1
        self.complete = not out_of_time
        return self

    def _unit(self, key: str, work: Callable[[], dict], runs: int = 1) -> dict:
        value = self.journal.get(key)
        if value is None:
            if self.stop_at is not None and time.perf_counter() >= self.stop_at:
                raise _OutOfTime
            value = work() | {"reward scorer": self.reward_scorer}
            self.journal.put(key, value)
        if key not in self._stepped:
            self._stepped.add(key)
            for _ in range(runs):
                self.step(key)
        return value

    def _bon(self, prompt: Prompt, seed: int, n0: int) -> dict:
        return self._unit(f"bon/{prompt.id}/seed {seed}/n0 {n0}",
                          lambda: run_bon(self.backend, prompt, self.config, n0, seed))

    def _earlier_layout(self, where: str) -> bool:
        """Whether the journal holds runs of this prompt, seed and n0 outside a group."""
        return (self.journal.get(f"bon/{where}") is not None
                or any(self.journal.get(f"{kind}/{where}/{variant.label}") is not None
                       for kind in ("sr", "pair") for variant in self.variants))

    def _group(self, prompt: Prompt, seed: int, n0: int) -> dict | None:
        """The group of this prompt, seed and n0: journaled, or run now; None where the journal holds
        these runs in the earlier layout."""
        where = f"{prompt.id}/seed {seed}/n0 {n0}"
        key = f"group/{where}"
        if self.journal.get(key) is None and self._earlier_layout(where):
            return None
        sr_first = (self.positions[prompt.id] + seed + self.config.n.index(n0)) % 2 == 0

        def group() -> dict:
            def bon() -> dict:
                return run_bon(self.backend, prompt, self.config, n0, seed)
            best_of_n0 = None if sr_first else bon()
            sr = {variant.label: asdict(run_sr(self.backend, prompt, self.config, n0, seed, variant,
                                               self.schedules[variant.schedule]))
                  for variant in self.variants}
            return {"sr first": sr_first, "bon": best_of_n0 or bon(), "sr": sr}

        return self._unit(key, group, runs=1 + len(self.variants))

    def _pool_samples(self, prompt: Prompt, seed: int, n0: int) -> dict:
        group = self._group(prompt, seed, n0)
        return (group["bon"] if group is not None else self._bon(prompt, seed, n0))["samples"]

    def _pool(self, prompt: Prompt) -> Pool:
        if prompt.id not in self.pools:
            largest = max(self.config.n)
            seeds = range(1, self.config.seeds + 1)
            runs = [self._pool_samples(prompt, seed, largest) for seed in seeds]
            sources = [seed for seed, run in zip(seeds, runs) for _ in run["scores"]]
            fresh_size = self.pool_target - len(sources)
            if fresh_size > 0:
                fresh_config = self.config.with_overrides(pool_size=fresh_size)
                runs.append(self._unit(f"pool/{prompt.id}/fresh {fresh_size}", lambda: asdict(
                    build_pool(self.backend, prompt, fresh_config))))
                sources += [0] * len(runs[-1]["scores"])
            self.pools[prompt.id] = Pool(prompt.id, *([x for run in runs for x in run[name]]
                                                      for name in ("scores", "decoded_tokens", "wall_seconds")))
            self.pool_seeds[prompt.id] = sources
        return self.pools[prompt.id]

    def _pair(self, prompt: Prompt, seed: int, n0: int, variant: Variant, sr_first: bool) -> Pair:
        self._pool(prompt)
        where = f"{prompt.id}/seed {seed}/n0 {n0}/{variant.label}"
        alone = self.journal.get(f"sr/{where}")
        if alone is not None:  # journaled before pairs were timed together: against the shared Best-of-n0
            bon = self._bon(prompt, seed, n0)
            return Pair(prompt.id, seed, n0, variant, Outcome(**alone), Outcome(**bon["outcome"]), self.reward_scorer)
        group = self._group(prompt, seed, n0)
        if group is not None and variant.label in group["sr"]:
            return Pair(prompt.id, seed, n0, variant, Outcome(**group["sr"][variant.label]),
                        Outcome(**group["bon"]["outcome"]), group["reward scorer"], timed_together=True,
                        sr_first=group["sr first"])

        def both() -> dict:
            runs = {"sr": lambda: asdict(run_sr(self.backend, prompt, self.config, n0, seed, variant,
                                                self.schedules[variant.schedule])),
                    "bon": lambda: run_bon(self.backend, prompt, self.config, n0, seed)["outcome"]}
            first, second = ("sr", "bon") if sr_first else ("bon", "sr")
            done = {first: runs[first]()}
            done[second] = runs[second]()
            return {"sr first": sr_first, **done}

        value = self._unit(f"pair/{where}", both)
        return Pair(prompt.id, seed, n0, variant, Outcome(**value["sr"]), Outcome(**value["bon"]),
                    value["reward scorer"], timed_together=True, sr_first=value["sr first"])


class _OutOfTime(Exception):
    pass
