"""The paired summary and its report section, on synthetic pairs whose answers are known."""
import numpy as np
import pytest

from bench.paired import Outcome, Pair, PairedResults, Variant
from bench.paired_report import paired_payload, paired_section
from bench.paired_summary import candidates_that_fit, summarize_pairs
from bench.records import Pool

N0 = 8
FIXED = Variant("double-4", 0.5)
GREEDY = Variant("double-4", 0.9)
ADAPTIVE = Variant("double-4", 0.5, adaptive=True)


def run(index, reward, decoded, scored, wall):
    # One millisecond per decoded token and a tenth of that per scored token.
    return Outcome(index=index, text=f"answer {index}", reward=reward, decoded_tokens=decoded, scored_tokens=scored,
                   wall_seconds=wall, generate_seconds=decoded * 1e-3, score_seconds=scored * 1e-4,
                   prompt_tokens=100)


@pytest.fixture
def results():
    rng = np.random.default_rng(5)
    pools, pairs = [], []
    for prompt in ("p0", "p1"):
        scores = rng.normal(size=4 * N0)
        pools.append(Pool(prompt, scores.tolist(), [100] * scores.size, [0.1] * scores.size))
        best_of_8 = float(np.quantile(scores, 0.85))
        for seed in (1, 2, 3):
            bon = run(3, best_of_8, 800, 800, 4.0)
            lost = prompt == "p0" and seed > 1  # two losses, both on one prompt
            pairs.append(Pair(prompt, seed, N0, FIXED, run(5 if lost else 3, best_of_8 - (1.0 if lost else 0.0),
                                                           400, 600, 2.0), bon))
            pairs.append(Pair(prompt, seed, N0, GREEDY, run(3, float(scores.max()) + 5, 200, 500, 1.0), bon))
            pairs.append(Pair(prompt, seed, N0, ADAPTIVE, run(3, best_of_8, 400, 600, 2.0), bon))
    return PairedResults(pairs, pools, max_new_tokens=100, kv_budget_bytes=1000 * 64, kv_bytes_per_token=64)


def test_every_figure_of_a_variant_is_computed_over_its_pairs(results):
    by_variant = {s.variant: s for s in summarize_pairs(results, resamples=300)}
    fixed = by_variant[FIXED]
    assert (fixed.pairs, fixed.prompts) == (6, 2)
    assert fixed.same_index.estimate == pytest.approx(4 / 6) and fixed.same_text_share == pytest.approx(4 / 6)
    assert fixed.reward_gap.estimate == pytest.approx(-2 / 6)
    assert fixed.reward_gap.low <= fixed.reward_gap.estimate <= fixed.reward_gap.high <= 0
    assert fixed.decoded_ratio.estimate == pytest.approx(2.0)
    assert fixed.token_compute_ratio.estimate == pytest.approx(1600 / 1000)
    assert fixed.weighted_compute_ratio.estimate == pytest.approx((0.8 + 0.08) / (0.4 + 0.06))
    assert fixed.wall_ratio.estimate == pytest.approx(2.0)
    assert fixed.n_fit == candidates_that_fit(64_000, 64, 100, 100) == 9
    assert fixed.equivalent_n.estimate.n <= N0
    assert fixed.devices_at_equal_latency == pytest.approx(fixed.equivalent_n.estimate.n / 9)


def test_a_reward_above_best_of_n0_counts_as_n0_and_is_called_noise(results):
    greedy = {s.variant: s for s in summarize_pairs(results, resamples=300)}[GREEDY]
    assert greedy.equivalent_n.estimate.n == N0 and greedy.equivalent_n.estimate.bound == "above_cap"
    assert greedy.equivalent_n.high == N0 and greedy.equivalent_n.above_cap_share == 1.0
    section = paired_section(results, *paired_payload(results)[1:])
    # 6 of 6: the exact interval's lower end is 0.025 ** (1 / 6)
    assert f"| {N0} | double-4 | α = 0.9 | {greedy.pairs} | 6 of 6, 100.0% [54.1%, 100.0%]; text 100% |" in section
    assert f">{N0} (noise) [{N0}+, {N0}+]" in section


def test_the_adaptive_rule_is_judged_against_the_fixed_rate_of_equal_cost_on_the_same_pairs(results):
    payload, summaries, comparisons = paired_payload(results)
    (comparison,) = comparisons
    assert comparison.fixed == FIXED  # same compute ratio as the adaptive variant
    assert comparison.reward_difference.estimate == pytest.approx(2 / 6)
    # Both losses on one prompt: resampling prompts, a draw without that prompt has no difference at all.
    assert comparison.verdict == "no detectable reward difference"
    assert payload["adaptive_comparisons"][0]["verdict"] == comparison.verdict
    assert len(payload["pairs"]) == 18 and len(payload["summaries"]) == 3
    section = paired_section(results, summaries, comparisons)
    assert "| 8 | double-4, adaptive ≥0.5 | double-4, α=0.5 |" in section


def test_the_same_results_give_the_same_intervals(results):
    assert summarize_pairs(results, resamples=200) == summarize_pairs(results, resamples=200)


@pytest.mark.parametrize("low, high, adaptive_ratio, verdict", [
    (0.1, 0.3, 2.0, "adaptive wins"),
    (0.1, 0.3, 1.5, "adaptive: more reward, less saved"),
    (-0.3, -0.1, 2.0, "adaptive: less reward, more saved"),
    (-0.3, -0.1, 1.5, "fixed wins"),
    (-0.1, 0.1, 2.5, "no detectable reward difference"),
])
def test_the_verdict_weighs_reward_against_compute(low, high, adaptive_ratio, verdict):
    from bench.bootstrap import Interval
    from bench.paired_summary import AdaptiveComparison

    comparison = AdaptiveComparison(N0, ADAPTIVE, FIXED, Interval((low + high) / 2, low, high), adaptive_ratio, 1.8)
    assert comparison.verdict == verdict
