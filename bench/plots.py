"""PNG figures of a benchmark: reward against cost, survivors per round, decoding throughput.

Figures are built with matplotlib's object API (`Figure`, rendered by Agg), not pyplot, so that no
GUI backend or global figure state is involved.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, StrMethodFormatter

from bench.report import ConfigSummary, summarize
from bench.run_results import BenchResults
from bench.shared.records import BEST_OF_N, SPECULATIVE_REJECTION, RunRecord, ThroughputRow
from bench.stats.equivalence import BestOfNReference, best_of_n_reference, compare_with_best_of_n

# Sequence counts read better as 64 than as 2^6.
PLAIN_NUMBER = StrMethodFormatter("{x:g}")


def write_plots(results: BenchResults, out_dir: str | Path) -> list[Path]:
    """Write every figure the results have data for; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if results.pools:
        summaries = summarize(compare_with_best_of_n(results.runs, results.pools))
        written.append(plot_reward_vs_cost(best_of_n_reference(results.pools), summaries, out_dir / "reward_vs_cost.png"))
    if any(run.method == SPECULATIVE_REJECTION for run in results.runs):
        max_new_tokens = results.metadata.get("max new tokens")
        written.append(plot_survivors(results.runs, out_dir / "survivors_per_round.png",
                                      max_new_tokens if isinstance(max_new_tokens, int) else None))
    if results.throughput:
        written.append(plot_throughput(results.throughput, out_dir / "throughput.png"))
    return written


def plot_reward_vs_cost(reference: BestOfNReference, summaries: Sequence[ConfigSummary], path: Path) -> Path:
    """Mean reward against mean decoded tokens, in the manner of the paper's Figure.

    Best-of-N is the exact expected curve from the pools; each configuration is one point per
    initial n, joined across n. Rewards are raw means over prompts (not normalised per prompt), so
    the points sit on the curve's scale only if every configuration ran on the pooled prompts.
    """
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(reference.mean_decoded_tokens, reference.mean_reward, color="black", label="Best-of-N (expected, from pools)")

    lines: dict[tuple, list[ConfigSummary]] = defaultdict(list)
    for summary in summaries:
        lines[(summary.method, summary.rejection_rate, summary.schedule)].append(summary)
    for (method, rejection_rate, schedule), points in lines.items():
        points.sort(key=lambda s: s.n)
        label = "Best-of-N (measured)" if method == BEST_OF_N else f"SR α={rejection_rate:g}, {schedule}"
        axes.plot(
            [s.mean_decoded_tokens for s in points], [s.mean_reward for s in points], marker="o", linestyle="--", label=label
        )
        for s in points:
            axes.annotate(f"n={s.n}", (s.mean_decoded_tokens, s.mean_reward), textcoords="offset points", xytext=(4, -10), fontsize=7)

    axes.set_xscale("log")
    axes.set_xlabel("decoded tokens per prompt (mean over prompts)")
    axes.set_ylabel("reward of the returned response (mean over prompts)")
    axes.set_title(f"Reward against decoding cost ({reference.prompts} prompts)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path


def plot_survivors(runs: Sequence[RunRecord], path: Path, max_new_tokens: int | None = None) -> Path:
    """Live sequences per Speculative Rejection configuration, against the response position where
    each decision point fell (so memory-driven schedules show their doubling lengths, and the area
    under a line is roughly the decoding cost), or against the round number for runs without positions.

    The line is the median over runs that reached the round (position and count) and the band their
    interquartile range: memory-driven schedules give runs different numbers of rounds.
    """
    sr = [run for run in runs if run.method == SPECULATIVE_REJECTION]
    by_position = all(len(run.decision_points) == len(run.survivors_per_round) for run in sr)
    by_config: dict[tuple, list[tuple[list[int], list[int]]]] = defaultdict(list)
    for run in sr:
        by_config[run.config].append(([0, *run.decision_points], [run.n, *run.survivors_per_round]))

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for (_, n, rejection_rate, schedule), trajectories in sorted(by_config.items()):
        rounds = max(len(counts) for _, counts in trajectories)
        reached = [[t for t in trajectories if len(t[1]) > k] for k in range(rounds)]
        q1, median, q3 = np.array([np.quantile([t[1][k] for t in group], [0.25, 0.5, 0.75])
                                   for k, group in enumerate(reached)]).T
        label = f"n={n}, α={rejection_rate:g}, {schedule}"
        if not by_position:
            x = np.arange(rounds)
            (line,) = axes.plot(x, median, marker="o", label=label)
            axes.fill_between(x, q1, q3, color=line.get_color(), alpha=0.2)
            continue
        x = np.array([np.median([t[0][k] for t in group]) for k, group in enumerate(reached)])
        if max_new_tokens and x[-1] < max_new_tokens:
            # The last survivors decode on to the end of the response.
            x, q1, median, q3 = (np.append(values, last) for values, last in
                                 ((x, max_new_tokens), (q1, q1[-1]), (median, median[-1]), (q3, q3[-1])))
        (line,) = axes.plot(x, median, drawstyle="steps-post", label=label)
        axes.plot(x[1:rounds], median[1:rounds], "o", color=line.get_color())
        axes.fill_between(x, q1, q3, step="post", color=line.get_color(), alpha=0.15)

    axes.set_yscale("log", base=2)
    axes.yaxis.set_major_formatter(PLAIN_NUMBER)
    if by_position:
        axes.set_xlabel("response tokens decoded (markers: decision points, median position)")
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("decision point (0 = initial batch)")
    axes.set_ylabel("live sequences (median, IQR band)")
    axes.set_title("Survivors per round")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path


def plot_throughput(rows: Sequence[ThroughputRow], path: Path) -> Path:
    """Decoded tokens per second of our engine and of Hugging Face generate(), against batch size."""
    rows = sorted(rows, key=lambda r: r.batch_size)
    batch_sizes = [r.batch_size for r in rows]
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(batch_sizes, [r.engine_tokens_per_second for r in rows], marker="o", label="engine (shared prefill)")
    axes.plot(batch_sizes, [r.hf_generate_tokens_per_second for r in rows], marker="s", label="Hugging Face generate()")
    axes.set_xscale("log", base=2)
    axes.set_xticks(batch_sizes, labels=[str(b) for b in batch_sizes])
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_ylim(bottom=0)
    axes.set_xlabel("batch size")
    axes.set_ylabel("decoded tokens per second")
    axes.set_title("Decoding throughput")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path
