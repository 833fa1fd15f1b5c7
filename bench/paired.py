"""The paired experiment: Speculative Rejection against live Best-of-n0 from the same initial candidates.

The generator samples a sequence's tokens as a pure function of (seed, sequence index, position),
so Best-of-n0 with a run's seed completes exactly the n0 candidates that Speculative Rejection
starts from. On one pair (prompt, seed) the two methods therefore differ only by what rejection
did: whether it kept Best-of-n0's winner, what reward it lost or (by luck) gained, and what it
saved. Best-of-n0 runs once per pair and is shared by every variant (schedule, rejection rate,
fixed or adaptive rule), so all variants are compared on the same pairs.

A pool of at least 4 x n0 complete samples per prompt, with seeds no run uses, gives the Best-of-N
curve on which mean rewards are placed (`bench/paired_summary.py`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.config import BenchConfig, Schedule
from bench.efficiency import build_pool, request, schedule_arguments
from bench.prompts import Prompt
from bench.records import Pool
from specrej.v1 import coordinator_pb2 as pb

POOL_FACTOR = 4  # pools hold at least this many times n0, so Best-of-n0's curve is well estimated


@dataclass(frozen=True)
class Variant:
    """One way of running Speculative Rejection: where it decides and how many it rejects."""

    schedule: str
    rejection_rate: float
    adaptive: bool = False  # rejection_rate is then the least fraction rejected

    @property
    def label(self) -> str:
        rule = f"adaptive ≥{self.rejection_rate:g}" if self.adaptive else f"α={self.rejection_rate:g}"
        return f"{self.schedule}, {rule}"


@dataclass(frozen=True)
class Outcome:
    """What one run returned and cost."""

    index: int  # the chosen candidate's index among the initial n0
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


@dataclass(frozen=True)
class Pair:
    """Speculative Rejection (one variant) and Best-of-n0 on one prompt and seed."""

    prompt_id: str
    seed: int
    n0: int
    variant: Variant
    sr: Outcome
    bon: Outcome

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
    """Every schedule with every fixed rejection rate, then with every adaptive rule's least rate."""
    return [Variant(schedule.name, alpha, adaptive)
            for schedule in config.schedules
            for adaptive, rates in ((False, config.rejection_rates), (True, config.adaptive_rates))
            for alpha in rates]


def jobs(config: BenchConfig, prompts: int) -> int:
    """Progress units: a pool per prompt, then per prompt, seed and n0 one Best-of-n0 and every variant."""
    return prompts * (1 + config.seeds * len(config.n) * (1 + len(variants(config))))


def run_sr(backend, prompt: Prompt, config: BenchConfig, n0: int, seed: int, variant: Variant,
           schedule: Schedule) -> Outcome:
    arguments = schedule_arguments(schedule, n0)
    generate = request(prompt, config, method=pb.SPECULATIVE_REJECTION, n=n0, seed=seed,
                       rejection_rate=variant.rejection_rate, every_tokens=arguments["every_tokens"],
                       first_decision_tokens=arguments["first_decision_tokens"])
    generate.adaptive_rejection = variant.adaptive
    response, wall = backend.run(generate, memory_round_tokens=arguments["memory_round_tokens"],
                                 kv_budget_tokens=arguments["kv_budget_tokens"])
    return outcome(response, wall)


def run_paired(backend, prompts: Sequence[Prompt], config: BenchConfig,
               step: Callable[[str], None] = lambda _: None) -> tuple[list[Pool], list[Pair]]:
    """Pools of max(pool size, 4 x largest n0) per prompt, then every pair of every variant."""
    pool_config = config.with_overrides(pool_size=max(config.pool_size, POOL_FACTOR * max(config.n)))
    schedules = {schedule.name: schedule for schedule in config.schedules}
    pools, pairs = [], []
    for prompt in prompts:
        pools.append(build_pool(backend, prompt, pool_config))
        step(f"pool of {pool_config.pool_size}, prompt {prompt.id}")
        for seed in range(1, config.seeds + 1):
            for n0 in config.n:
                response, wall = backend.run(request(prompt, config, method=pb.BEST_OF_N, n=n0, seed=seed),
                                             memory_round_tokens=config.max_new_tokens)
                bon = outcome(response, wall)
                step(f"BoN n0={n0}, prompt {prompt.id} seed {seed}")
                for variant in variants(config):
                    sr = run_sr(backend, prompt, config, n0, seed, variant, schedules[variant.schedule])
                    pairs.append(Pair(prompt.id, seed, n0, variant, sr, bon))
                    step(f"SR n0={n0} {variant.label}, prompt {prompt.id} seed {seed}")
    return pools, pairs
