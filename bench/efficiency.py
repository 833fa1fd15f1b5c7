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

from bench.config import DOUBLE, EVERY, MEMORY, POOL_SEED_BASE, BenchConfig, Schedule
from bench.prompts import Prompt
from bench.records import BEST_OF_N, SPECULATIVE_REJECTION, Pool, RunRecord
from common.errors import ServiceError
from specrej.v1 import coordinator_pb2 as pb

NO_SCHEDULE = "none"  # Best-of-N's schedule name


def jobs(config: BenchConfig, prompts: int) -> int:
    """Progress units: one pool and every run, per prompt."""
    runs = config.seeds * (len(config.n) * len(config.rejection_rates) * len(config.schedules) + len(config.best_of_n))
    return prompts * (1 + runs)


def request(prompt: Prompt, config: BenchConfig, *, method: int, n: int, seed: int, rejection_rate: float = 0.0,
            every_tokens: int = 0, return_top: int = 0, first_decision_tokens: int | None = None) -> pb.GenerateRequest:
    generate = pb.GenerateRequest(
        prompt=prompt.text, n=n, method=method, max_new_tokens=config.max_new_tokens, seed=seed,
        temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
        decision_every_tokens=every_tokens, return_top=return_top,
    )
    if method == pb.SPECULATIVE_REJECTION:
        generate.rejection_rate = rejection_rate
    if first_decision_tokens is not None:
        generate.first_decision_tokens = first_decision_tokens
    return generate


def schedule_arguments(schedule: Schedule, n: int) -> dict:
    """How the backend and pipeline realise a schedule for an initial n: the request's interval or
    first doubling point (0 = memory-driven only), the session's KV budget, and the tokens every
    candidate must reach before the first decision point."""
    if schedule.kind in (EVERY, DOUBLE):
        return {"every_tokens": schedule.tokens if schedule.kind == EVERY else 0,
                "first_decision_tokens": schedule.tokens if schedule.kind == DOUBLE else None,
                "kv_budget_tokens": None, "memory_round_tokens": schedule.tokens}
    if schedule.kind == MEMORY and schedule.tokens:
        # The budget holds B/n tokens per candidate: the first decision point falls there.
        return {"every_tokens": 0, "first_decision_tokens": 0, "kv_budget_tokens": schedule.tokens,
                "memory_round_tokens": schedule.tokens // n}
    return {"every_tokens": 0, "first_decision_tokens": 0, "kv_budget_tokens": None, "memory_round_tokens": 1}


def build_pool(backend, prompt: Prompt, config: BenchConfig) -> Pool:
    """`pool_size` complete samples, scored as complete responses. Made as Best-of-N sessions of at
    most `pool_batch` candidates (halved while the generator says n does not fit), each chunk with
    its own seed; a sample's wall time is its chunk's wall time over the chunk's size."""
    scores, tokens, seconds = [], [], []
    chunk, seed = min(config.pool_size, config.pool_batch), POOL_SEED_BASE
    while len(scores) < config.pool_size:
        size = min(chunk, config.pool_size - len(scores))
        generate = request(prompt, config, method=pb.BEST_OF_N, n=size, seed=seed, return_top=size)
        try:
            response, wall = backend.run(generate, memory_round_tokens=config.max_new_tokens)
        except ServiceError as error:
            if error.message.startswith("n:") and size > 1:
                chunk = size // 2
                continue
            raise
        seed += 1
        scores += [candidate.score for candidate in response.ranked]
        tokens += [candidate.num_tokens for candidate in response.ranked]
        seconds += [wall / size] * size
    return Pool(prompt.id, scores, tokens, seconds)


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
