"""What the paired experiment says per variant, each figure with a bootstrap interval over pairs.

Ratios are ratios of sums over pairs (total Best-of-n0 cost over total Speculative Rejection cost),
not geometric means of per-pair ratios: the question is what a stream of such requests costs.
Every variant is resampled with the same draws of pairs (common resamples).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.bootstrap import Interval, bootstrap, mean_interval, percentile_interval, ratio_of_sums_interval, \
    resample_indices
from bench.equivalence import ABOVE_CAP, AT_MOST_ONE, EquivalentN, equivalent_n
from bench.order_stats import expected_max_curve
from bench.paired import Pair, PairedResults, Variant


@dataclass(frozen=True)
class TokenCosts:
    """Seconds per decoded and per scored token, measured on this run's Best-of-n0 runs."""

    decode_seconds: float
    score_seconds: float


@dataclass(frozen=True)
class EquivalentNInterval:
    """Equivalent N of the variant's mean reward on the mean Best-of-N curve of the same pairs' prompts,
    capped at n0, with the bootstrap percentiles of the (capped) resampled values."""

    estimate: EquivalentN
    low: float
    high: float
    above_cap_share: float  # resamples whose mean reward beat Best-of-n0's expectation
    at_most_one_share: float  # resamples below Best-of-1


@dataclass(frozen=True)
class VariantSummary:
    n0: int
    variant: Variant
    pairs: int
    prompts: int
    same_index: Interval  # share of pairs where SR returned Best-of-n0's own choice
    same_text_share: float
    reward_gap: Interval  # mean of SR reward - Best-of-n0 reward
    decoded_ratio: Interval  # Best-of-n0 decoded / SR decoded
    token_compute_ratio: Interval  # Best-of-n0 (decoded + scored) / SR (decoded + scored)
    weighted_compute_ratio: Interval  # the same with measured seconds per decoded and per scored token
    wall_ratio: Interval
    sr_mean_decoded: float
    sr_mean_scored: float
    bon_mean_decoded: float
    bon_mean_scored: float
    equivalent_n: EquivalentNInterval
    bon_equivalent_n: EquivalentNInterval  # the live Best-of-n0 on the same curve: its own noise
    n_fit: int  # candidates of max_new_tokens that fit one generator's KV budget beside the prompt
    devices_at_equal_latency: float  # equivalent N / n_fit (GPU-oriented; below 1: Best-of-N fits one)
    decision_points: tuple[int, ...]  # the most frequent trajectory
    survivors_per_round: tuple[int, ...]


@dataclass(frozen=True)
class AdaptiveComparison:
    """An adaptive variant against the fixed rate on the same schedule whose compute ratio is nearest."""

    n0: int
    adaptive: Variant
    fixed: Variant
    reward_difference: Interval  # mean over pairs of adaptive reward - fixed reward
    adaptive_compute_ratio: float
    fixed_compute_ratio: float

    @property
    def verdict(self) -> str:
        saves_at_least_as_much = self.adaptive_compute_ratio >= self.fixed_compute_ratio
        if self.reward_difference.low > 0:
            return "adaptive wins" if saves_at_least_as_much else "adaptive: more reward, less saved"
        if self.reward_difference.high < 0:
            return "adaptive: less reward, more saved" if saves_at_least_as_much else "fixed wins"
        return "no detectable reward difference"


def token_costs(pairs: Sequence[Pair]) -> TokenCosts:
    """Per-token seconds from the distinct Best-of-n0 runs: every candidate decodes to the end and
    is scored once, so each side's time over its tokens is a clean per-token cost."""
    runs = {(p.prompt_id, p.seed, p.n0): p.bon for p in pairs}.values()
    decoded = sum(r.decoded_tokens for r in runs)
    scored = sum(r.scored_tokens for r in runs)
    return TokenCosts(sum(r.generate_seconds for r in runs) / max(decoded, 1),
                      sum(r.score_seconds for r in runs) / max(scored, 1))


def candidates_that_fit(kv_budget_bytes: int, kv_bytes_per_token: int, prompt_tokens: float,
                        max_new_tokens: int) -> int:
    """How many candidates of full length fit one generator's KV budget (the prompt stored once)."""
    response_tokens = kv_budget_bytes / kv_bytes_per_token - prompt_tokens
    return max(1, int(response_tokens // max_new_tokens))


def _equivalent_n_interval(curves: np.ndarray, rewards: np.ndarray, n0: int, draws: np.ndarray) -> EquivalentNInterval:
    def place(rows) -> EquivalentN:
        return equivalent_n(curves[rows].mean(axis=0), float(rewards[rows].mean()), cap=n0)

    estimate = place(np.arange(rewards.size))
    replicates = [place(row) for row in draws]
    interval = percentile_interval(estimate.n, [r.n for r in replicates])
    return EquivalentNInterval(estimate, interval.low, interval.high,
                               float(np.mean([r.bound == ABOVE_CAP for r in replicates])),
                               float(np.mean([r.bound == AT_MOST_ONE for r in replicates])))


def summarize_pairs(results: PairedResults, resamples: int = 2000, seed: int = 0) -> list[VariantSummary]:
    """One summary per (n0, variant), in the order the variants were run."""
    pools = {pool.prompt_id: pool for pool in results.pools}
    curve_length = min(pool.size for pool in results.pools)
    curves = {prompt: expected_max_curve(pool.scores, curve_length) for prompt, pool in pools.items()}
    groups: dict[tuple[int, Variant], list[Pair]] = defaultdict(list)
    for pair in results.pairs:
        groups[(pair.n0, pair.variant)].append(pair)
    costs_by_n0 = {n0: token_costs([p for p in results.pairs if p.n0 == n0]) for n0, _ in groups}
    draws_by_count: dict[int, np.ndarray] = {}
    summaries = []
    for (n0, variant), group in groups.items():
        group = sorted(group, key=lambda p: (p.prompt_id, p.seed))
        count = len(group)
        draws = draws_by_count.setdefault(count, resample_indices(count, resamples, seed))
        costs = costs_by_n0[n0]
        sr, bon = [p.sr for p in group], [p.bon for p in group]

        def column(outcomes, name):
            return np.array([getattr(o, name) for o in outcomes], dtype=np.float64)

        def weighted(outcomes):
            return costs.decode_seconds * column(outcomes, "decoded_tokens") \
                + costs.score_seconds * column(outcomes, "scored_tokens")

        prompt_curves = np.array([curves[p.prompt_id] for p in group])
        prompt_tokens = float(np.mean(column(bon, "prompt_tokens")))
        n_fit = candidates_that_fit(results.kv_budget_bytes, results.kv_bytes_per_token, prompt_tokens,
                                    results.max_new_tokens)
        sr_equivalent = _equivalent_n_interval(prompt_curves, column(sr, "reward"), n0, draws)
        trajectory = Counter((tuple(o.decision_points), tuple(o.survivors_per_round)) for o in sr).most_common(1)[0][0]
        summaries.append(VariantSummary(
            n0=n0, variant=variant, pairs=count, prompts=len({p.prompt_id for p in group}),
            same_index=mean_interval([p.same_index for p in group], draws),
            same_text_share=float(np.mean([p.same_text for p in group])),
            reward_gap=mean_interval(column(sr, "reward") - column(bon, "reward"), draws),
            decoded_ratio=ratio_of_sums_interval(column(bon, "decoded_tokens"), column(sr, "decoded_tokens"), draws),
            token_compute_ratio=ratio_of_sums_interval(
                column(bon, "decoded_tokens") + column(bon, "scored_tokens"),
                column(sr, "decoded_tokens") + column(sr, "scored_tokens"), draws),
            weighted_compute_ratio=ratio_of_sums_interval(weighted(bon), weighted(sr), draws),
            wall_ratio=ratio_of_sums_interval(column(bon, "wall_seconds"), column(sr, "wall_seconds"), draws),
            sr_mean_decoded=float(column(sr, "decoded_tokens").mean()),
            sr_mean_scored=float(column(sr, "scored_tokens").mean()),
            bon_mean_decoded=float(column(bon, "decoded_tokens").mean()),
            bon_mean_scored=float(column(bon, "scored_tokens").mean()),
            equivalent_n=sr_equivalent,
            bon_equivalent_n=_equivalent_n_interval(prompt_curves, column(bon, "reward"), n0, draws),
            n_fit=n_fit,
            devices_at_equal_latency=sr_equivalent.estimate.n / n_fit,
            decision_points=trajectory[0], survivors_per_round=trajectory[1],
        ))
    return summaries


def compare_adaptive(results: PairedResults, summaries: Sequence[VariantSummary], resamples: int = 2000,
                     seed: int = 0) -> list[AdaptiveComparison]:
    """Each adaptive variant against the fixed-rate variant of its schedule and n0 whose token compute
    ratio is nearest, by the paired reward difference on the very same pairs."""
    by_variant = {(s.n0, s.variant): s for s in summaries}
    rewards: dict[tuple[int, Variant], dict[tuple[str, int], float]] = defaultdict(dict)
    for pair in results.pairs:
        rewards[(pair.n0, pair.variant)][(pair.prompt_id, pair.seed)] = pair.sr.reward
    comparisons = []
    for (n0, variant), summary in by_variant.items():
        if not variant.adaptive:
            continue
        fixed = [s for (m, v), s in by_variant.items()
                 if m == n0 and not v.adaptive and v.schedule == variant.schedule]
        if not fixed:
            continue
        rival = min(fixed, key=lambda s: abs(s.token_compute_ratio.estimate - summary.token_compute_ratio.estimate))
        keys = sorted(rewards[(n0, variant)].keys() & rewards[(n0, rival.variant)].keys())
        differences = np.array([rewards[(n0, variant)][k] - rewards[(n0, rival.variant)][k] for k in keys])
        draws = resample_indices(len(keys), resamples, seed)
        comparisons.append(AdaptiveComparison(
            n0=n0, adaptive=variant, fixed=rival.variant,
            reward_difference=bootstrap(lambda rows: float(differences[rows].mean()), len(keys), draws),
            adaptive_compute_ratio=summary.token_compute_ratio.estimate,
            fixed_compute_ratio=rival.token_compute_ratio.estimate,
        ))
    return comparisons
