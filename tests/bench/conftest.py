"""Synthetic benchmark results shared by the report and plot tests."""
import numpy as np
import pytest

from bench.run_results import BenchResults
from bench.shared.records import BEST_OF_N, SPECULATIVE_REJECTION, OverheadRow, Pool, RunRecord, ThroughputRow

POOL_SIZE = 16


@pytest.fixture
def synthetic_results() -> BenchResults:
    rng = np.random.default_rng(7)
    pools, runs = [], []
    for prompt in ("p0", "p1", "p2"):
        scores = rng.normal(size=POOL_SIZE)
        tokens = rng.integers(20, 200, size=POOL_SIZE)
        pools.append(Pool(prompt, scores.tolist(), tokens.tolist(), (tokens / 500).tolist()))
        for seed in (0, 1):
            for n, rejection_rate, schedule, survivors in (
                (16, 0.5, "memory", [8, 4, 2]),
                (32, 0.5, "memory", [16, 8, 4, 2]),
                (16, 0.75, "every-32", [4, 1]),
            ):
                runs.append(
                    RunRecord(
                        prompt_id=prompt,
                        method=SPECULATIVE_REJECTION,
                        n=n,
                        rejection_rate=rejection_rate,
                        schedule=schedule,
                        reward=float(np.quantile(scores, 0.6 + 0.02 * seed + n / 200)),
                        decoded_tokens=int(tokens.mean() * n / 3),
                        scored_tokens=int(tokens.mean() * n / 2),
                        wall_seconds=0.1 * n,
                        survivors_per_round=survivors[: len(survivors) - seed],
                        seed=seed,
                    )
                )
        # A reward above the pool's best: its equivalent N is only a lower bound.
        runs.append(RunRecord(prompt, SPECULATIVE_REJECTION, 64, 0.9, "memory", float(scores.max()) + 1, 900, 1200, 3.0, [6, 1]))
        runs.append(RunRecord(prompt, BEST_OF_N, 8, 0.0, "none", float(np.sort(scores)[-3]), int(tokens.mean() * 8), 900, 1.5))
    return BenchResults(
        runs=runs,
        pools=pools,
        throughput=[ThroughputRow(b, 213, 128, 100.0 * b**0.5, 30.0 * b**0.3) for b in (1, 8, 64)],
        overhead=[OverheadRow("n=16, alpha=0.5, 64 tokens", 2.0, 2.2)],
        metadata={"generator": "synthetic", "reward": "synthetic"},
    )
