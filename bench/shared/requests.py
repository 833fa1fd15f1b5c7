"""What the efficiency and paired studies ask of a backend alike: a run's GenerateRequest, how a
decision-point schedule is realised for an initial n, and a pool of complete samples for the
Best-of-N curve."""
from __future__ import annotations

from bench.shared.config import DOUBLE, EVERY, MEMORY, POOL_SEED_BASE, BenchConfig, Schedule
from bench.shared.prompts import Prompt
from bench.shared.records import Pool
from common.errors import ServiceError
from specrej.v1 import coordinator_pb2 as pb


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
