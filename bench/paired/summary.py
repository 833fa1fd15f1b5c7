"""What the paired experiment says per variant, each figure with a bootstrap interval.

The pairs are prompts x seeds, and seeds of one prompt are not independent draws: every interval
resamples the prompts (each drawn prompt brings all of its pairs, `bootstrap.clustered_indices`);
the interval of resampling the pairs alone is kept beside it (`pair_bootstrap`), to show how much
the clustering matters. The share of pairs where SR returned Best-of-n0's choice gets the exact
binomial (Clopper-Pearson) interval instead: a bootstrap of a share near 100 % collapses onto it.

Ratios are ratios of sums over pairs (total Best-of-n0 cost over total Speculative Rejection cost),
not geometric means of per-pair ratios: the question is what a stream of such requests costs.
Every variant is resampled with the same draws (common resamples).

Beside the paired figures, the paper's own reading: against the pools' Best-of-N curve, how much
more Best-of-N would decode to reach SR's mean reward (ratio at equal reward) and how much more
reward SR gets than Best-of-N decoding as many tokens (gain at equal compute), and how often SR's
answer beats that Best-of-N's (win rate at equal compute: per pair, the exact probability that SR's
reward beats the best of that many pool samples, a tie counting half). A pair is placed on its
prompt's curve without its own seed's Best-of-n0 candidates, which the SR run also started from.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.paired.experiment import Pair, PairedResults, Variant
from bench.stats.binomial import clopper_pearson
from bench.stats.bootstrap import Interval, bootstrap, clustered_indices, mean_interval, percentile_interval, \
    ratio_of_sums_interval, resample_indices
from bench.stats.equivalence import ABOVE_CAP, AT_MOST_ONE, EquivalentN, equivalent_n
from bench.stats.order_stats import expected_cost, expected_max_curve, win_probability


@dataclass(frozen=True)
class TokenCosts:
    """Seconds per decoded and per scored token, measured on this run's Best-of-n0 runs."""

    decode_seconds: float
    score_seconds: float


@dataclass(frozen=True)
class EquivalentNInterval:
    """Equivalent N of the variant's mean reward on the mean Best-of-N curve of the same pairs' prompts,
    capped at n0, with the (prompt-clustered) bootstrap percentiles of the (capped) resampled values."""

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
    same_index_count: int
    same_index: Interval  # share of pairs where SR returned Best-of-n0's own choice (Clopper-Pearson)
    same_text_share: float
    reward_gap: Interval  # mean of SR reward - Best-of-n0 reward
    decoded_ratio: Interval  # Best-of-n0 decoded / SR decoded
    token_compute_ratio: Interval  # Best-of-n0 (decoded + scored) / SR (decoded + scored)
    weighted_compute_ratio: Interval  # the same with measured seconds per decoded and per scored token
    wall_ratio: Interval
    timed_together: int  # pairs whose Best-of-n0 ran right before or after SR (the rest: a shared earlier run)
    ratio_at_equal_reward: Interval  # Best-of-N decoded tokens at the equivalent N / SR decoded tokens
    gain_at_equal_compute: Interval  # SR mean reward - Best-of-N's expected reward at SR's decoded tokens
    win_rate_at_equal_compute: Interval  # mean over pairs of P(SR's reward beats Best-of-N at SR's decoded tokens)
    pair_bootstrap: dict[str, Interval]  # the same figures resampling pairs as if independent
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


def _equivalent_n_interval(curves: np.ndarray, rewards: np.ndarray, n0: int, draws) -> EquivalentNInterval:
    def place(rows) -> EquivalentN:
        return equivalent_n(curves[rows].mean(axis=0), float(rewards[rows].mean()), cap=n0)

    estimate = place(np.arange(rewards.size))
    replicates = [place(row) for row in draws]
    interval = percentile_interval(estimate.n, [r.n for r in replicates])
    return EquivalentNInterval(estimate, interval.low, interval.high,
                               float(np.mean([r.bound == ABOVE_CAP for r in replicates])),
                               float(np.mean([r.bound == AT_MOST_ONE for r in replicates])))


def _curve_reward(curve: np.ndarray, n: float) -> float:
    """Best-of-N's expected reward at a real N (linear between integer sizes, as `equivalent_n`
    reads the curve), N held within the curve."""
    return float(np.interp(min(max(n, 1.0), curve.size), np.arange(1, curve.size + 1), curve))


def _paper_reading(curves: np.ndarray, sample_tokens: np.ndarray, rewards: np.ndarray, decoded: np.ndarray,
                   n0: int, draws) -> tuple[Interval, Interval]:
    """Ratio at equal reward and gain at equal compute on the rows' mean curve, each with its interval.

    Best-of-N decodes N x a pool sample's mean tokens; the equivalent N is capped at n0 as everywhere
    in this report, so the ratio at equal reward is at most Best-of-n0's expected tokens over SR's."""
    def ratio(rows) -> float:
        n = equivalent_n(curves[rows].mean(axis=0), float(rewards[rows].mean()), cap=n0).n
        return expected_cost(sample_tokens[rows], n) / float(decoded[rows].mean())

    def gain(rows) -> float:
        n = float(decoded[rows].mean()) / float(sample_tokens[rows].mean())
        return float(rewards[rows].mean()) - _curve_reward(curves[rows].mean(axis=0), n)

    return bootstrap(ratio, rewards.size, draws), bootstrap(gain, rewards.size, draws)


def _win_rates(pool_scores: dict, sample_tokens: dict, pairs: Sequence[Pair]) -> np.ndarray:
    """Per pair, P(SR's reward beats Best-of-N drawn from its prompt's pool without its own seed), N
    sized so that Best-of-N decodes as many tokens as SR did."""
    return np.array([win_probability(pool_scores[(p.prompt_id, p.seed)], p.sr.reward,
                                     p.sr.decoded_tokens / sample_tokens[(p.prompt_id, p.seed)]) for p in pairs])


def _curves(results: PairedResults) -> tuple[dict, dict, dict]:
    """Per (prompt, seed): the Best-of-N curve, a sample's mean decoded tokens and the scores from the
    prompt's pool without that seed's Best-of-n0 candidates (the very candidates its pair's runs
    started from)."""
    pools = {pool.prompt_id: pool for pool in results.pools}
    kept = {}
    for prompt, seed in {(p.prompt_id, p.seed) for p in results.pairs}:
        sources = results.pool_seeds.get(prompt, [0] * pools[prompt].size)
        kept[(prompt, seed)] = [i for i, source in enumerate(sources) if source != seed]
    length = min(len(rows) for rows in kept.values())
    scores = {key: [pools[key[0]].scores[i] for i in rows] for key, rows in kept.items()}
    curves = {key: expected_max_curve(values, length) for key, values in scores.items()}
    tokens = {key: float(np.mean([pools[key[0]].decoded_tokens[i] for i in rows])) for key, rows in kept.items()}
    return curves, tokens, scores


def summarize_pairs(results: PairedResults, resamples: int = 2000, seed: int = 0) -> list[VariantSummary]:
    """One summary per (n0, variant), in the order the variants were run."""
    if not results.pairs:
        return []
    curves, sample_tokens, pool_scores = _curves(results)
    groups: dict[tuple[int, Variant], list[Pair]] = defaultdict(list)
    for pair in results.pairs:
        groups[(pair.n0, pair.variant)].append(pair)
    costs_by_n0 = {n0: token_costs([p for p in results.pairs if p.n0 == n0]) for n0, _ in groups}
    draws_by_clusters: dict[tuple[str, ...], list] = {}
    summaries = []
    for (n0, variant), group in groups.items():
        group = sorted(group, key=lambda p: (p.prompt_id, p.seed))
        count = len(group)
        clusters = tuple(p.prompt_id for p in group)
        draws = draws_by_clusters.setdefault(clusters, clustered_indices(clusters, resamples, seed))
        pair_draws = resample_indices(count, resamples, seed)
        costs = costs_by_n0[n0]
        sr, bon = [p.sr for p in group], [p.bon for p in group]

        def column(outcomes, name):
            return np.array([getattr(o, name) for o in outcomes], dtype=np.float64)

        def weighted(outcomes):
            return costs.decode_seconds * column(outcomes, "decoded_tokens") \
                + costs.score_seconds * column(outcomes, "scored_tokens")

        prompt_curves = np.array([curves[(p.prompt_id, p.seed)] for p in group])
        prompt_tokens = float(np.mean(column(bon, "prompt_tokens")))
        n_fit = candidates_that_fit(results.kv_budget_bytes, results.kv_bytes_per_token, prompt_tokens,
                                    results.max_new_tokens)
        sr_equivalent = _equivalent_n_interval(prompt_curves, column(sr, "reward"), n0, draws)
        trajectory = Counter((tuple(o.decision_points), tuple(o.survivors_per_round)) for o in sr).most_common(1)[0][0]

        def figures(resampled) -> dict[str, Interval]:
            return {
                "reward_gap": mean_interval(column(sr, "reward") - column(bon, "reward"), resampled),
                "decoded_ratio": ratio_of_sums_interval(column(bon, "decoded_tokens"), column(sr, "decoded_tokens"),
                                                        resampled),
                "token_compute_ratio": ratio_of_sums_interval(
                    column(bon, "decoded_tokens") + column(bon, "scored_tokens"),
                    column(sr, "decoded_tokens") + column(sr, "scored_tokens"), resampled),
                "weighted_compute_ratio": ratio_of_sums_interval(weighted(bon), weighted(sr), resampled),
                "wall_ratio": ratio_of_sums_interval(column(bon, "wall_seconds"), column(sr, "wall_seconds"), resampled),
            }

        same = sum(p.same_index for p in group)
        at_equal_reward, at_equal_compute = _paper_reading(
            prompt_curves, np.array([sample_tokens[(p.prompt_id, p.seed)] for p in group]), column(sr, "reward"),
            column(sr, "decoded_tokens"), n0, draws)
        summaries.append(VariantSummary(
            n0=n0, variant=variant, pairs=count, prompts=len(set(clusters)),
            same_index_count=same, same_index=clopper_pearson(same, count),
            same_text_share=float(np.mean([p.same_text for p in group])),
            **figures(draws),
            timed_together=sum(p.timed_together for p in group),
            ratio_at_equal_reward=at_equal_reward, gain_at_equal_compute=at_equal_compute,
            win_rate_at_equal_compute=mean_interval(_win_rates(pool_scores, sample_tokens, group), draws),
            pair_bootstrap=figures(pair_draws),
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
        draws = clustered_indices([prompt for prompt, _ in keys], resamples, seed)
        comparisons.append(AdaptiveComparison(
            n0=n0, adaptive=variant, fixed=rival.variant,
            reward_difference=bootstrap(lambda rows: float(differences[rows].mean()), len(keys), draws),
            adaptive_compute_ratio=summary.token_compute_ratio.estimate,
            fixed_compute_ratio=rival.token_compute_ratio.estimate,
        ))
    return comparisons
