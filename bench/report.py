"""Summaries of a benchmark, written as results.json (every number) and results.md (tables)."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.paired.report import paired_payload, paired_section
from bench.run_results import BenchResults
from bench.shared.formatting import fmt
from bench.shared.records import SPECULATIVE_REJECTION, OverheadRow, RunRecord, ThroughputRow
from bench.stats.equivalence import (
    ABOVE_CAP,
    AT_LEAST_M,
    AT_MOST_ONE,
    PromptComparison,
    Spread,
    best_of_n_reference,
    compare_with_best_of_n,
    spread,
)


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration (method, n, rejection rate, schedule) over all its prompts."""

    method: str
    n: int
    rejection_rate: float
    schedule: str
    prompts: int
    runs: int
    mean_reward: float
    mean_decoded_tokens: float
    mean_scored_tokens: float
    mean_wall_seconds: float
    equivalent_n: Spread
    at_most_one: int  # prompts whose equivalent N is only an upper bound (reward below Best-of-1)
    at_least_m: int  # prompts whose equivalent N is only a lower bound (reward above Best-of-M)
    above_n: int  # prompts whose reward beat Best-of-n's expectation: luck, equivalent N capped at n
    token_cost_ratio: Spread
    wall_cost_ratio: Spread


def summarize(comparisons: Sequence[PromptComparison]) -> list[ConfigSummary]:
    """One summary per configuration, ordered by method, n, rejection rate and schedule."""
    by_config: dict[tuple, list[PromptComparison]] = defaultdict(list)
    for comparison in comparisons:
        by_config[comparison.config].append(comparison)
    summaries = []
    for config in sorted(by_config):
        group = by_config[config]
        method, n, rejection_rate, schedule = config
        summaries.append(
            ConfigSummary(
                method=method,
                n=n,
                rejection_rate=rejection_rate,
                schedule=schedule,
                prompts=len(group),
                runs=sum(c.runs for c in group),
                # Prompts weigh equally, whatever their number of seeds.
                mean_reward=float(np.mean([c.reward for c in group])),
                mean_decoded_tokens=float(np.mean([c.decoded_tokens for c in group])),
                mean_scored_tokens=float(np.mean([c.scored_tokens for c in group])),
                mean_wall_seconds=float(np.mean([c.wall_seconds for c in group])),
                equivalent_n=spread([c.equivalent_n for c in group]),
                at_most_one=sum(c.bound == AT_MOST_ONE for c in group),
                at_least_m=sum(c.bound == AT_LEAST_M for c in group),
                above_n=sum(c.bound == ABOVE_CAP for c in group),
                token_cost_ratio=spread([c.token_cost_ratio for c in group]),
                wall_cost_ratio=spread([c.wall_cost_ratio for c in group]),
            )
        )
    return summaries


def write_report(results: BenchResults, out_dir: str | Path) -> tuple[Path, Path]:
    """Write results.json and results.md into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    comparisons = compare_with_best_of_n(results.runs, results.pools)
    summaries = summarize(comparisons)
    reference = best_of_n_reference(results.pools) if results.pools else None

    payload = {
        "metadata": results.metadata,
        "summaries": [asdict(s) for s in summaries],
        "comparisons": [asdict(c) for c in comparisons],
        "best_of_n_reference": asdict(reference) if reference else None,
        "runs": [asdict(r) for r in results.runs],
        "pools": [asdict(p) for p in results.pools],
        "throughput": [asdict(row) | {"speedup": row.speedup} for row in results.throughput],
        "overhead": [asdict(row) | {"ratio": row.ratio} for row in results.overhead],
    }
    paired_text = ""
    if results.paired is not None:
        payload["paired"], paired_summaries, adaptive = paired_payload(results.paired)
        paired_text = paired_section(results.paired, paired_summaries, adaptive)
    json_path = out_dir / "results.json"
    # allow_nan=False: NaN and Infinity are not JSON, and would mean a broken measurement anyway.
    json_path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")

    sections = [
        "# Speculative Rejection against Best-of-N\n",
        _metadata_list(results.metadata),
        paired_text,
        _configuration_table(summaries, results) if results.runs or results.paired is None else "",
        _decision_points_table(results.runs),
        _throughput_table(results.throughput),
        _overhead_table(results.overhead),
    ]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(section for section in sections if section))
    return json_path, md_path


def _metadata_list(metadata: dict) -> str:
    return "".join(f"- **{key}**: {value}\n" for key, value in metadata.items())


def _configuration_table(summaries: Sequence[ConfigSummary], results: BenchResults) -> str:
    lines = ["## Reward and cost per configuration\n"]
    if not summaries:
        return lines[0] + "\nNo decoding runs were recorded.\n"
    smallest, largest = min(pool.size for pool in results.pools), max(pool.size for pool in results.pools)
    pool_sizes = str(smallest) if smallest == largest else f"{smallest} to {largest}"
    lines += [
        f"Best-of-N reference: {len(results.pools)} prompts, pools of {pool_sizes} scored samples each; "
        "Best-of-N's expected reward at every N is exact for draws without replacement from the pool.\n",
        "*Equivalent N*: the smallest Best-of-N (linearly interpolated between integer N) whose "
        "expected reward reaches the configuration's reward on that prompt, capped at the configuration's n: "
        "from n candidates no method beats Best-of-n in expectation, so a reward above Best-of-n's expectation "
        "is luck and counts as n (*above n*, noise, not a lower bound); a `≥` marks prompts where the pool was "
        "smaller than n (a lower bound). *Cost ratio*: Best-of-N's cost at the "
        "equivalent N over the configuration's own cost (above 1: cheaper than Best-of-N). "
        "Ratios and N are summarised over prompts by geometric mean, median, [interquartile range] "
        "and min–max.\n",
        "| method | n | rejection rate | schedule | prompts | mean reward | mean decoded tokens "
        "| mean scored tokens | mean wall s | equivalent N geo-mean | equivalent N median | "
        "equivalent N range | prompts below N=1 / above n (noise) / above pool | token cost ratio | wall cost ratio |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lower_bound = "≥" if s.at_least_m else ""
        all_lower_bounds = "≥" if s.at_least_m == s.prompts else ""
        lines.append(
            f"| {s.method} | {s.n} | {s.rejection_rate:g} | {s.schedule} | {s.prompts} "
            f"| {fmt(s.mean_reward, 4)} | {fmt(s.mean_decoded_tokens)} | {fmt(s.mean_scored_tokens)} "
            f"| {fmt(s.mean_wall_seconds)} | {lower_bound}{fmt(s.equivalent_n.geo_mean)} "
            f"| {lower_bound}{fmt(s.equivalent_n.median)} "
            f"| {all_lower_bounds}{fmt(s.equivalent_n.min)}–{lower_bound}{fmt(s.equivalent_n.max)} "
            f"| {s.at_most_one} / {s.above_n} / {s.at_least_m} "
            f"| {_ratio(s.token_cost_ratio, lower_bound)} | {_ratio(s.wall_cost_ratio, lower_bound)} |"
        )
    return "\n".join(lines) + "\n"


def _decision_points_table(runs: Sequence[RunRecord]) -> str:
    """Where each Speculative Rejection configuration decided, and how many candidates it kept: the
    most frequent trajectory over its runs (memory-driven ones may differ between prompts)."""
    by_config: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.method == SPECULATIVE_REJECTION:
            by_config[run.config].append(run)
    if not by_config:
        return ""
    lines = [
        "## Decision points\n",
        "The most frequent sequence of decision points (response token positions) and of candidates kept "
        "after each, over a configuration's runs.\n",
        "| method | n | rejection rate | schedule | decision points | kept after each | runs with this trajectory |",
        "|---|---:|---:|---|---|---|---:|",
    ]
    for config in sorted(by_config):
        group = by_config[config]
        trajectory, count = Counter(
            (tuple(run.decision_points), tuple(run.survivors_per_round)) for run in group
        ).most_common(1)[0]
        method, n, rejection_rate, schedule = config
        points, kept = (", ".join(map(str, values)) or "none" for values in trajectory)
        lines.append(f"| {method} | {n} | {rejection_rate:g} | {schedule} | {points} | {kept} | {count} of {len(group)} |")
    return "\n".join(lines) + "\n"


def _ratio(summary: Spread, lower_bound: str) -> str:
    return f"{lower_bound}{fmt(summary.geo_mean)} [{fmt(summary.q1)}–{fmt(summary.q3)}]"


def _throughput_table(rows: Sequence[ThroughputRow]) -> str:
    header = "## Decoding throughput: engine against Hugging Face generate()\n"
    if not rows:
        return header + "\nNot measured in this run.\n"
    lines = [
        header,
        "| batch size | prompt tokens | new tokens | engine tokens/s | generate() tokens/s | speedup "
        "| decode step ms | prune half ms | KV bytes before → after prune |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in sorted(rows, key=lambda r: r.batch_size):
        lines.append(
            f"| {row.batch_size} | {row.prompt_tokens} | {row.new_tokens} | {fmt(row.engine_tokens_per_second)} "
            f"| {fmt(row.hf_generate_tokens_per_second)} | {fmt(row.speedup)}× "
            f"| {fmt(row.decode_step_seconds * 1e3)} | {fmt(row.prune_seconds * 1e3)} "
            f"| {row.kv_bytes_before_prune:,} → {row.kv_bytes_after_prune:,} |"
        )
    return "\n".join(lines) + "\n\n*Prune half*: dropping half the rows from the KV cache after the run (their " \
        "keys/values copied out), beside the mean decode step at the full batch.\n"


def _overhead_table(rows: Sequence[OverheadRow]) -> str:
    header = "## gRPC overhead: in-process against through the services\n"
    if not rows:
        return header + "\nNot measured in this run.\n"
    lines = [header, "| workload | in-process s | gRPC s | ratio |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row.label} | {fmt(row.in_process_seconds)} | {fmt(row.grpc_seconds)} | {fmt(row.ratio)}× |"
        )
    return "\n".join(lines) + "\n"
