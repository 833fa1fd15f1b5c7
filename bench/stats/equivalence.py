"""How large a Best-of-N matches a Speculative Rejection run, and what that Best-of-N would cost.

For each prompt the pool gives Best-of-N's expected reward at every N (`order_stats`). The
*equivalent N* of a run is the smallest N whose expected reward reaches the run's reward, and the
*cost ratio* is the cost of Best-of-N at that N over the run's own cost: above 1 means Speculative
Rejection was cheaper for the same reward.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.shared.records import Pool, RunRecord
from bench.stats.order_stats import expected_cost, expected_max_curve

# Where the reward fell relative to the Best-of-N curve of its prompt.
WITHIN = "within"  # interpolated between two sizes of the pool
AT_MOST_ONE = "at_most_1"  # below Best-of-1: reported as 1, an upper bound
AT_LEAST_M = "at_least_m"  # above Best-of-M: reported as M, a lower bound (a larger pool would tell more)
# Above the cap n0: Speculative Rejection from n0 candidates returns one of those n0, so in expectation
# it can never beat Best-of-n0; a reward above Best-of-n0's expectation is luck, reported as n0.
ABOVE_CAP = "above_cap"


@dataclass(frozen=True)
class EquivalentN:
    n: float
    bound: str  # WITHIN, AT_MOST_ONE or AT_LEAST_M


def equivalent_n(curve: Sequence[float], reward: float, cap: int | None = None) -> EquivalentN:
    """The smallest (real) N whose Best-of-N expected reward reaches `reward`; curve[k] is for N = k+1.

    With `cap` (a run's initial n0), a reward beyond Best-of-cap's expectation is reported as `cap`,
    marked ABOVE_CAP (noise, not a lower bound), as long as the curve reaches that far; only a
    curve shorter than the cap leaves a lower bound (AT_LEAST_M).

    Between integer sizes the curve is interpolated linearly in N. That is not only simple but
    exact for a realisable strategy: drawing N+1 samples with probability t and N otherwise has
    expected reward and expected cost both linear in t, so a fractional N is a real Best-of-N cost.
    """
    values = np.asarray(curve, dtype=np.float64)
    if values.size == 0:
        raise ValueError("the Best-of-N curve is empty")
    # Expected maxima never decrease with N; this only irons out rounding in the last digits.
    values = np.maximum.accumulate(values)
    if cap is not None and cap <= values.size and reward > values[cap - 1]:
        return EquivalentN(float(cap), ABOVE_CAP)
    first_reaching = int(np.searchsorted(values, reward, side="left"))
    if first_reaching == values.size:
        return EquivalentN(float(values.size), AT_LEAST_M)
    if first_reaching == 0:
        return EquivalentN(1.0, WITHIN if reward == values[0] else AT_MOST_ONE)
    below, above = values[first_reaching - 1], values[first_reaching]
    fraction = (reward - below) / (above - below)  # above > below: `above` is the first to reach reward
    return EquivalentN(first_reaching + fraction, WITHIN)


@dataclass(frozen=True)
class Spread:
    """Summary of a positive quantity over prompts (ratios and sizes are compared multiplicatively)."""

    count: int
    geo_mean: float
    median: float
    q1: float
    q3: float
    min: float
    max: float


def spread(values: Sequence[float]) -> Spread:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("cannot summarise an empty list")
    if np.any(array <= 0):
        raise ValueError("a geometric mean needs positive values")
    q1, median, q3 = np.quantile(array, [0.25, 0.5, 0.75])
    return Spread(
        count=int(array.size),
        geo_mean=float(np.exp(np.log(array).mean())),
        median=float(median),
        q1=float(q1),
        q3=float(q3),
        min=float(array.min()),
        max=float(array.max()),
    )


@dataclass(frozen=True)
class PromptComparison:
    """One configuration on one prompt (runs averaged over seeds) set against that prompt's Best-of-N."""

    prompt_id: str
    config: tuple[str, int, float, str]  # RunRecord.config
    runs: int
    reward: float
    decoded_tokens: float
    scored_tokens: float
    wall_seconds: float
    equivalent_n: float
    bound: str
    token_cost_ratio: float  # Best-of-N decoded tokens at equivalent_n / the run's decoded tokens
    wall_cost_ratio: float  # Best-of-N wall seconds at equivalent_n / the run's wall seconds


def compare_with_best_of_n(runs: Sequence[RunRecord], pools: Sequence[Pool]) -> list[PromptComparison]:
    """Place every (prompt, configuration) on its prompt's Best-of-N curve, capped at its n.

    Repeated runs (seeds) of one configuration on one prompt are averaged first, since the curve
    is an expected reward too. Every run's prompt must have a pool.
    """
    pool_by_prompt = {pool.prompt_id: pool for pool in pools}
    missing = sorted({run.prompt_id for run in runs} - pool_by_prompt.keys())
    if missing:
        raise KeyError(f"no pool for prompts {missing}")
    curves = {prompt_id: expected_max_curve(pool.scores) for prompt_id, pool in pool_by_prompt.items()}

    grouped: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        grouped[(run.prompt_id, run.config)].append(run)

    comparisons = []
    for (prompt_id, config), group in grouped.items():
        pool = pool_by_prompt[prompt_id]
        reward = float(np.mean([run.reward for run in group]))
        decoded = float(np.mean([run.decoded_tokens for run in group]))
        wall = float(np.mean([run.wall_seconds for run in group]))
        match = equivalent_n(curves[prompt_id], reward, cap=config[1])
        comparisons.append(
            PromptComparison(
                prompt_id=prompt_id,
                config=config,
                runs=len(group),
                reward=reward,
                decoded_tokens=decoded,
                scored_tokens=float(np.mean([run.scored_tokens for run in group])),
                wall_seconds=wall,
                equivalent_n=match.n,
                bound=match.bound,
                token_cost_ratio=expected_cost(pool.decoded_tokens, match.n) / decoded,
                wall_cost_ratio=expected_cost(pool.wall_seconds, match.n) / wall,
            )
        )
    return comparisons


@dataclass(frozen=True)
class BestOfNReference:
    """Best-of-N averaged over prompts at N = 1..the smallest pool size (the reference line of plots)."""

    n: list[int]
    mean_reward: list[float]
    mean_decoded_tokens: list[float]
    mean_wall_seconds: list[float]
    prompts: int


def best_of_n_reference(pools: Sequence[Pool]) -> BestOfNReference:
    """Mean over prompts of each prompt's expected best reward and expected cost at each N.

    The mean is over raw rewards, not normalised per prompt: it is only comparable with runs made on
    the same prompts, so a driver should run every configuration on every pooled prompt.
    """
    if not pools:
        raise ValueError("no pools")
    max_n = min(pool.size for pool in pools)
    sizes = np.arange(1, max_n + 1)
    rewards = np.mean([expected_max_curve(pool.scores, max_n) for pool in pools], axis=0)
    tokens = np.mean([expected_cost(pool.decoded_tokens, 1) for pool in pools]) * sizes
    seconds = np.mean([expected_cost(pool.wall_seconds, 1) for pool in pools]) * sizes
    return BestOfNReference(
        n=sizes.tolist(),
        mean_reward=rewards.tolist(),
        mean_decoded_tokens=tokens.tolist(),
        mean_wall_seconds=seconds.tolist(),
        prompts=len(pools),
    )
