"""The paired experiment's section of results.md, and its numbers for results.json."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace

from bench.paired.experiment import JOURNAL_NAME, Pair, PairedResults
from bench.paired.partial_agreement import DecisionPointAgreement, partial_agreement
from bench.paired.summary import AdaptiveComparison, EquivalentNInterval, VariantSummary, compare_adaptive, \
    summarize_pairs, token_costs
from bench.shared.formatting import fmt
from bench.stats.bootstrap import LEVEL, RESAMPLES, Interval
from bench.stats.equivalence import ABOVE_CAP, AT_MOST_ONE

# Rewards are float32 means of log-probabilities of order 1: differences below this are rounding.
REWARD_ROUNDING = 1e-6
# A run's per-candidate scores (every decision point's partial rewards, Best-of-n0's final rewards) are most
# of its record and already kept in the paired journal: results.json keeps each run's totals.
PER_CANDIDATE_FIELDS = ("partial_scores", "candidate_rewards")


def paired_payload(results: PairedResults) -> tuple[dict, list[VariantSummary], list[AdaptiveComparison]]:
    summaries = summarize_pairs(results)
    comparisons = compare_adaptive(results, summaries)
    payload = {
        "summaries": [asdict(s) for s in summaries],
        "partial_agreement": [asdict(a) for a in partial_agreement(results.pairs)],
        "adaptive_comparisons": [asdict(c) | {"verdict": c.verdict} for c in comparisons],
        "token_costs": {n0: asdict(token_costs([p for p in results.pairs if p.n0 == n0]))
                        for n0 in sorted({p.n0 for p in results.pairs})},
        "pairs": [_pair_totals(p) for p in results.pairs],
        "per_candidate_scores": f"in {JOURNAL_NAME}, beside this file: " + ", ".join(PER_CANDIDATE_FIELDS)
                                + " of every run",
        "pools": [asdict(p) for p in results.pools],
        "pool_seeds": results.pool_seeds,
        "kv_budget_bytes": results.kv_budget_bytes,
        "kv_bytes_per_token": results.kv_bytes_per_token,
        "max_new_tokens": results.max_new_tokens,
    }
    return payload, summaries, comparisons


def _pair_totals(pair: Pair) -> dict:
    record = asdict(pair)
    for outcome in (record["sr"], record["bon"]):
        for name in PER_CANDIDATE_FIELDS:
            del outcome[name]
    return record


def paired_section(results: PairedResults, summaries: Sequence[VariantSummary],
                   comparisons: Sequence[AdaptiveComparison]) -> str:
    if not summaries:
        return "## Paired: Speculative Rejection against Best-of-n0 from the same candidates\n\nNo pairs were run.\n"
    level = f"{LEVEL:.0%}"
    pool_sizes = sorted({pool.size for pool in results.pools})
    costs = {n0: token_costs([p for p in results.pairs if p.n0 == n0]) for n0 in sorted({s.n0 for s in summaries})}
    cost_text = "; ".join(f"n0 = {n0}: {fmt(c.decode_seconds * 1e3)} ms per decoded token, "
                          f"{fmt(c.score_seconds * 1e3)} ms per scored token" for n0, c in costs.items())
    seeds = summaries[0].pairs // summaries[0].prompts
    shared = sum(s.pairs - s.timed_together for s in summaries)
    timing = ("Every pair's Best-of-n0 ran right before or right after its SR run (SR first on every other pair), "
              "so the wall ratio compares runs made together." if not shared else
              f"{shared} of the {sum(s.pairs for s in summaries)} pairs were journaled before the two runs of a pair "
              "were made together: their wall ratio sets SR against one Best-of-n0 run per prompt and seed, shared by "
              "every variant and made up to hours earlier, so the machine's drift in between is in it.")
    lines = [
        "## Paired: Speculative Rejection against Best-of-n0 from the same candidates\n",
        f"Each pair is one prompt and one seed: Best-of-n0 with that seed completes exactly the n0 candidates "
        f"Speculative Rejection starts from. {summaries[0].prompts} prompts x {seeds} "
        f"seeds = {summaries[0].pairs} pairs per variant (a variant stopped part-way has fewer: the *pairs* column). "
        f"The pairs are not {summaries[0].pairs} independent draws: the seeds of one prompt resemble each other, so "
        f"intervals are {level} bootstrap percentiles over {RESAMPLES} resamples of the *prompts*, each drawn prompt "
        "bringing all of its pairs (the same resamples for every variant with the same pairs); the same figures "
        "resampling the pairs as if independent follow in their own table"
        + (" (with one prompt, resampling prompts shows no spread at all: those intervals are points, not "
           "certainty). " if summaries[0].prompts == 1 else ". ") + timing + "\n",
        "- *same choice*: pairs where SR returned Best-of-n0's own best candidate (same index), their share with its "
        "exact binomial (Clopper-Pearson) interval, and the share with the very same text.",
        "- *reward gap*: mean of SR's reward minus Best-of-n0's on the same pair (0 or below: SR can only lose "
        "what rejection threw away; above 0 only when scores of partial and complete responses disagree).",
        "- *ratios*: Best-of-n0's total over SR's total across the pairs (a ratio of sums): decoded tokens; "
        "compute = decoded + reward-model tokens, as plain tokens and weighted by the seconds per decoded and per "
        f"scored token measured on this run's Best-of-n0 runs ({cost_text}); wall seconds.",
        f"- *equivalent N*: the Best-of-N whose expected reward, on the mean curve of the pairs' prompts (pools of "
        f"{', '.join(map(str, pool_sizes))} samples, each pair's curve without its own seed's Best-of-n0 candidates), "
        "reaches the variant's mean reward; capped at n0, since from n0 "
        "candidates nothing beats Best-of-n0 in expectation: `>n0 (noise)` means the mean reward lay above "
        "Best-of-n0's expectation, `≤1` below Best-of-1. The live Best-of-n0's own value on the same pairs "
        "shows how far luck moves it.",
        "- *devices at equal latency* (the paper's metric, GPU-oriented): equivalent N / n_fit, where n_fit is how "
        "many full-length candidates fit one generator's KV budget; Best-of-N at that N needs that many devices to "
        "finish in one pass, as SR does on one. Below 1, Best-of-N fits one device and the metric says nothing; "
        "on a CPU, cost follows the compute ratio instead.\n",
        "| n0 | schedule | rule | pairs | same choice | reward gap | decoded ratio | compute ratio (tokens) "
        "| compute ratio (weighted) | wall ratio | SR decoded + scored | equivalent N | live Best-of-n0's "
        "equivalent N | n_fit | devices at equal latency | decision points (kept) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        points = ", ".join(f"{p} ({k})" for p, k in zip(s.decision_points, s.survivors_per_round)) or "none"
        lines.append(
            f"| {s.n0} | {s.variant.schedule} | {_rule(s)} | {s.pairs} "
            f"| {s.same_index_count} of {s.pairs}, {_share(s.same_index)}; text {s.same_text_share:.0%} "
            f"| {_reward_difference(s.reward_gap)} "
            f"| {_interval(s.decoded_ratio)} | {_interval(s.token_compute_ratio)} "
            f"| {_interval(s.weighted_compute_ratio)} | {_interval(s.wall_ratio)} "
            f"| {fmt(s.sr_mean_decoded)} + {fmt(s.sr_mean_scored)} | {_equivalent(s.equivalent_n, s.n0)} "
            f"| {_equivalent(s.bon_equivalent_n, s.n0)} | {s.n_fit} | {fmt(s.devices_at_equal_latency)} | {points} |"
        )
    lines += [
        "",
        "### In the paper's terms: against the pools' Best-of-N curve\n",
        "Best-of-N at N decodes N times a pool sample's mean tokens (the pool without the pair's own seed). "
        "*Ratio at equal reward*: Best-of-N's decoded tokens at the variant's equivalent N (capped at n0, as above) "
        "over SR's. *Gain at equal compute*: SR's mean reward minus Best-of-N's expected reward at the N that "
        "decodes as many tokens as SR did (linear between sizes). *Win rate at equal compute*: how often SR's "
        "answer beats the best of that Best-of-N, per pair the exact probability over the pool's draws (a tie "
        "counting half), averaged over the pairs; 50 % is a draw. Intervals resample prompts as above.\n",
        "| n0 | schedule | rule | pairs | SR decoded | ratio at equal reward | gain at equal compute "
        "| win rate at equal compute |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {s.n0} | {s.variant.schedule} | {_rule(s)} | {s.pairs} | {fmt(s.sr_mean_decoded)} "
              f"| {_interval(s.ratio_at_equal_reward)} | {_reward_difference(s.gain_at_equal_compute)} "
              f"| {_share(s.win_rate_at_equal_compute)} |" for s in summaries]
    lines += [
        "",
        "### The same figures resampling pairs as if independent\n",
        "For comparison only: the pair bootstrap ignores that pairs of one prompt are alike, and runs narrower.\n",
        "| n0 | schedule | rule | pairs | reward gap | decoded ratio | compute ratio (tokens) | compute ratio "
        "(weighted) | wall ratio |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        b = s.pair_bootstrap
        lines.append(f"| {s.n0} | {s.variant.schedule} | {_rule(s)} | {s.pairs} | {_reward_difference(b['reward_gap'])} "
                     f"| {_interval(b['decoded_ratio'])} | {_interval(b['token_compute_ratio'])} "
                     f"| {_interval(b['weighted_compute_ratio'])} | {_interval(b['wall_ratio'])} |")
    lines += ["", _agreement_section(partial_agreement(results.pairs))]
    lines.append("")
    if comparisons:
        lines += [
            "### Adaptive rejection against fixed rates\n",
            "Each adaptive variant against the fixed rate on the same schedule whose compute ratio is nearest: the "
            f"mean reward difference over the same pairs ({level} interval). It *wins* when its reward is higher "
            "beyond the interval at no less compute saved.\n",
            "| n0 | adaptive | fixed | reward difference (adaptive - fixed) | compute ratio adaptive / fixed | verdict |",
            "|---:|---|---|---:|---:|---|",
        ]
        for c in comparisons:
            lines.append(f"| {c.n0} | {c.adaptive.label} | {c.fixed.label} | {_reward_difference(c.reward_difference)} "
                         f"| {fmt(c.adaptive_compute_ratio)} / {fmt(c.fixed_compute_ratio)} | {c.verdict} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _rule(summary: VariantSummary) -> str:
    variant = summary.variant
    rule = f"adaptive ≥{variant.rejection_rate:g}" if variant.adaptive else f"α = {variant.rejection_rate:g}"
    return rule + (", refill" if variant.refill else "")


def _agreement_section(agreements: Sequence[DecisionPointAgreement]) -> str:
    lines = ["### Partial against final rewards at each decision point\n"]
    if not agreements:
        return "\n".join(lines + ["No pair of this run recorded its partial rewards (pairs journaled before they "
                                   "were recorded).\n"])
    lines += [
        "Per decision point (response token position): Kendall's tau between the live candidates' partial rewards "
        "and the same candidates' final rewards in the pair's Best-of-n0 run (mean over the pairs, interval "
        "resampling prompts), and how often Best-of-n0's winner was live there, still decoding, and kept.\n",
        "| reward scorer | n0 | variant | token position | pairs | live candidates | Kendall tau | winner live "
        "| winner still decoding | winner kept |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {a.reward_scorer} | {a.n0} | {a.variant.label} | {a.token_position} | {a.decision_points} "
              f"| {fmt(a.mean_live)} | {_interval(a.kendall_tau) if a.kendall_tau else 'none (all tied)'} "
              f"| {a.winner_live_share:.0%} "
              f"| {a.winner_running_share:.0%} | {a.winner_kept_share:.0%} |" for a in agreements]
    return "\n".join(lines) + "\n"


def _interval(interval: Interval, digits: int = 3) -> str:
    return f"{fmt(interval.estimate, digits)} [{fmt(interval.low, digits)}, {fmt(interval.high, digits)}]"


def _reward_difference(interval: Interval) -> str:
    """A difference of rewards; ones within float32 rounding of 0 print as 0: one response scored
    incrementally and in one pass differs by ~1e-8, which printed as 0.0000000397 read like a finding."""
    def rounded(value: float) -> float:
        return 0.0 if abs(value) < REWARD_ROUNDING else value

    return _interval(replace(interval, estimate=rounded(interval.estimate), low=rounded(interval.low),
                             high=rounded(interval.high)), 3)


def _share(interval: Interval) -> str:
    return f"{interval.estimate:.1%} [{interval.low:.1%}, {interval.high:.1%}]"


def _equivalent(interval: EquivalentNInterval, n0: int) -> str:
    return f"{equivalent_n_text(interval.estimate.n, interval.estimate.bound, n0)} " \
           f"[{_bound_text(interval.low, n0)}, {_bound_text(interval.high, n0)}]"


def equivalent_n_text(value: float, bound: str, n0: int) -> str:
    """How an equivalent N reads: a number, `≤1` below Best-of-1, `>n0 (noise)` above Best-of-n0."""
    if bound == ABOVE_CAP:
        return f">{n0} (noise)"
    if bound == AT_MOST_ONE:
        return "≤1"
    return fmt(value)


def _bound_text(value: float, n0: int) -> str:
    """Interval ends are capped values: n0 stands for `n0 or above (noise)`, 1 for `1 or below`."""
    if value >= n0:
        return f"{n0}+"
    return "≤1" if value <= 1 else fmt(value)
