"""The paired experiment's section of results.md, and its numbers for results.json."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from bench.bootstrap import LEVEL, RESAMPLES, Interval
from bench.equivalence import ABOVE_CAP, AT_MOST_ONE
from bench.paired import PairedResults
from bench.paired_summary import AdaptiveComparison, EquivalentNInterval, VariantSummary, compare_adaptive, \
    summarize_pairs, token_costs
from bench.report import _fmt


def paired_payload(results: PairedResults) -> tuple[dict, list[VariantSummary], list[AdaptiveComparison]]:
    summaries = summarize_pairs(results)
    comparisons = compare_adaptive(results, summaries)
    payload = {
        "summaries": [asdict(s) for s in summaries],
        "adaptive_comparisons": [asdict(c) | {"verdict": c.verdict} for c in comparisons],
        "token_costs": {n0: asdict(token_costs([p for p in results.pairs if p.n0 == n0]))
                        for n0 in sorted({p.n0 for p in results.pairs})},
        "pairs": [asdict(p) for p in results.pairs],
        "pools": [asdict(p) for p in results.pools],
        "kv_budget_bytes": results.kv_budget_bytes,
        "kv_bytes_per_token": results.kv_bytes_per_token,
        "max_new_tokens": results.max_new_tokens,
    }
    return payload, summaries, comparisons


def paired_section(results: PairedResults, summaries: Sequence[VariantSummary],
                   comparisons: Sequence[AdaptiveComparison]) -> str:
    if not summaries:
        return "## Paired: Speculative Rejection against Best-of-n0 from the same candidates\n\nNo pairs were run.\n"
    level = f"{LEVEL:.0%}"
    pool_sizes = sorted({pool.size for pool in results.pools})
    costs = {n0: token_costs([p for p in results.pairs if p.n0 == n0]) for n0 in sorted({s.n0 for s in summaries})}
    cost_text = "; ".join(f"n0 = {n0}: {_fmt(c.decode_seconds * 1e3)} ms per decoded token, "
                          f"{_fmt(c.score_seconds * 1e3)} ms per scored token" for n0, c in costs.items())
    lines = [
        "## Paired: Speculative Rejection against Best-of-n0 from the same candidates\n",
        f"Each pair is one prompt and one seed: Best-of-n0 with that seed completes exactly the n0 candidates "
        f"Speculative Rejection starts from. {summaries[0].prompts} prompts x {summaries[0].pairs // summaries[0].prompts} "
        f"seeds = {summaries[0].pairs} pairs per variant (a variant stopped part-way has fewer: the *pairs* column); "
        f"intervals are {level} bootstrap percentiles over {RESAMPLES} resamples of the pairs (the same resamples for "
        f"every variant with the same pairs).\n",
        "- *same choice*: share of pairs where SR returned Best-of-n0's own best candidate (same index), with its "
        "interval, and the share with the very same text.",
        "- *reward gap*: mean of SR's reward minus Best-of-n0's on the same pair (0 or below: SR can only lose "
        "what rejection threw away; above 0 only when scores of partial and complete responses disagree).",
        "- *ratios*: Best-of-n0's total over SR's total across the pairs (a ratio of sums): decoded tokens; "
        "compute = decoded + reward-model tokens, as plain tokens and weighted by the seconds per decoded and per "
        f"scored token measured on this run's Best-of-n0 runs ({cost_text}); wall seconds.",
        f"- *equivalent N*: the Best-of-N whose expected reward, on the mean curve of the pairs' prompts (pools of "
        f"{', '.join(map(str, pool_sizes))} samples), reaches the variant's mean reward; capped at n0, since from n0 "
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
        rule = f"adaptive ≥{s.variant.rejection_rate:g}" if s.variant.adaptive else f"α = {s.variant.rejection_rate:g}"
        points = ", ".join(f"{p} ({k})" for p, k in zip(s.decision_points, s.survivors_per_round)) or "none"
        lines.append(
            f"| {s.n0} | {s.variant.schedule} | {rule} | {s.pairs} | {_share(s.same_index)}; text {s.same_text_share:.0%} "
            f"| {_interval(s.reward_gap, 3)} "
            f"| {_interval(s.decoded_ratio)} | {_interval(s.token_compute_ratio)} "
            f"| {_interval(s.weighted_compute_ratio)} | {_interval(s.wall_ratio)} "
            f"| {_fmt(s.sr_mean_decoded)} + {_fmt(s.sr_mean_scored)} | {_equivalent(s.equivalent_n, s.n0)} "
            f"| {_equivalent(s.bon_equivalent_n, s.n0)} | {s.n_fit} | {_fmt(s.devices_at_equal_latency)} | {points} |"
        )
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
            lines.append(f"| {c.n0} | {c.adaptive.label} | {c.fixed.label} | {_interval(c.reward_difference, 3)} "
                         f"| {_fmt(c.adaptive_compute_ratio)} / {_fmt(c.fixed_compute_ratio)} | {c.verdict} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _interval(interval: Interval, digits: int = 3) -> str:
    return f"{_fmt(interval.estimate, digits)} [{_fmt(interval.low, digits)}, {_fmt(interval.high, digits)}]"


def _share(interval: Interval) -> str:
    return f"{interval.estimate:.0%} [{interval.low:.0%}, {interval.high:.0%}]"


def _equivalent(interval: EquivalentNInterval, n0: int) -> str:
    return f"{equivalent_n_text(interval.estimate.n, interval.estimate.bound, n0)} " \
           f"[{_bound_text(interval.low, n0)}, {_bound_text(interval.high, n0)}]"


def equivalent_n_text(value: float, bound: str, n0: int) -> str:
    """How an equivalent N reads: a number, `≤1` below Best-of-1, `>n0 (noise)` above Best-of-n0."""
    if bound == ABOVE_CAP:
        return f">{n0} (noise)"
    if bound == AT_MOST_ONE:
        return "≤1"
    return _fmt(value)


def _bound_text(value: float, n0: int) -> str:
    """Interval ends are capped values: n0 stands for `n0 or above (noise)`, 1 for `1 or below`."""
    if value >= n0:
        return f"{n0}+"
    return "≤1" if value <= 1 else _fmt(value)
