"""The efficiency experiment: a pool of complete samples per prompt for the Best-of-N curve, then
Speculative Rejection (and a few live Best-of-N runs) on every prompt, with seeds the pool never used.

Fairness. The generator samples a sequence's tokens as a pure function of (seed, sequence index,
position), so a run with a pool's seed would start from the pool's own candidates and its reward
would be correlated with the very samples that estimate Best-of-N. Pools therefore use seeds from
POOL_SEED_BASE up and runs use 1..seeds: each run is an independent draw from the same model.
Every configuration uses the same run seeds, so on one prompt and seed all configurations start
from the same initial n candidates (common random numbers: differences between configurations are
not blurred by luck in the initial batch), and the rewards of a configuration are averaged over
seeds before being placed on the prompt's Best-of-N curve, itself an expectation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.shared.config import BenchConfig
from bench.shared.prompts import Prompt
from bench.shared.records import BEST_OF_N, SPECULATIVE_REJECTION, Pool, RunRecord
from bench.shared.requests import build_pool, request, schedule_arguments
from specrej.v1 import coordinator_pb2 as pb

NO_SCHEDULE = "none"  # Best-of-N's schedule name


def jobs(config: BenchConfig, prompts: int) -> int:
    """Progress units: one pool and every run, per prompt."""
    runs = config.seeds * (len(config.n) * len(config.rejection_rates) * len(config.schedules) + len(config.best_of_n))
    return prompts * (1 + runs)


def run_record(prompt: Prompt, method: str, n: int, rejection_rate: float, schedule: str, seed: int,
               response: pb.GenerateResponse, wall: float) -> RunRecord:
    stats = response.stats
    return RunRecord(
        prompt_id=prompt.id, method=method, n=n, rejection_rate=rejection_rate, schedule=schedule,
        reward=response.best.score, decoded_tokens=stats.generated_tokens, scored_tokens=stats.scored_tokens,
        wall_seconds=wall, survivors_per_round=[r.kept for r in stats.rounds], seed=seed,
        decision_points=[r.token_position for r in stats.rounds],
    )


def run_efficiency(backend, prompts: Sequence[Prompt], config: BenchConfig,
                   step: Callable[[str], None] = lambda _: None) -> tuple[list[Pool], list[RunRecord]]:
    """Pools and runs for every prompt; `step(description)` is called after each unit of work."""
    pools, runs = [], []
    for prompt in prompts:
        pools.append(build_pool(backend, prompt, config))
        step(f"pool of {config.pool_size}, prompt {prompt.id}")
        for seed in range(1, config.seeds + 1):
            for n in config.n:
                for alpha in config.rejection_rates:
                    for schedule in config.schedules:
                        arguments = schedule_arguments(schedule, n)
                        generate = request(prompt, config, method=pb.SPECULATIVE_REJECTION, n=n, seed=seed,
                                           rejection_rate=alpha, every_tokens=arguments["every_tokens"],
                                           first_decision_tokens=arguments["first_decision_tokens"])
                        response, wall = backend.run(generate, memory_round_tokens=arguments["memory_round_tokens"],
                                                     kv_budget_tokens=arguments["kv_budget_tokens"])
                        runs.append(run_record(prompt, SPECULATIVE_REJECTION, n, alpha, schedule.name, seed,
                                               response, wall))
                        step(f"SR n={n} α={alpha:g} {schedule}, prompt {prompt.id} seed {seed}")
            for n in config.best_of_n:
                generate = request(prompt, config, method=pb.BEST_OF_N, n=n, seed=seed)
                response, wall = backend.run(generate, memory_round_tokens=config.max_new_tokens)
                runs.append(run_record(prompt, BEST_OF_N, n, 0.0, NO_SCHEDULE, seed, response, wall))
                step(f"BoN n={n}, prompt {prompt.id} seed {seed}")
    return pools, runs
