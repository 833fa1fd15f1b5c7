"""The paired summary and its report section, on synthetic pairs whose answers are known."""
import numpy as np
import pytest

from bench.paired.experiment import Outcome, Pair, PairedResults, Variant
from bench.paired.report import paired_payload, paired_section
from bench.paired.summary import candidates_that_fit, summarize_pairs
from bench.shared.records import Pool

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
    from bench.stats.bootstrap import Interval
    from bench.paired.summary import AdaptiveComparison

    comparison = AdaptiveComparison(N0, ADAPTIVE, FIXED, Interval((low + high) / 2, low, high), adaptive_ratio, 1.8)
    assert comparison.verdict == verdict


def test_the_paper_s_reading_places_sr_on_the_best_of_n_curve(results):
    from bench.stats.order_stats import expected_max_curve

    greedy = {s.variant: s for s in summarize_pairs(results, resamples=200)}[GREEDY]
    # Above Best-of-8's expectation: the equivalent N is capped at 8, so Best-of-N decodes 8 x 100 tokens to SR's 200.
    assert greedy.ratio_at_equal_reward.estimate == pytest.approx(8 * 100 / 200)
    # SR decoded as much as Best-of-2 would; its reward against Best-of-2's expectation on the mean curve.
    curve = np.mean([expected_max_curve(pool.scores) for pool in results.pools], axis=0)
    sr_reward = np.mean([p.sr.reward for p in results.pairs if p.variant == GREEDY])
    assert greedy.gain_at_equal_compute.estimate == pytest.approx(sr_reward - curve[1])
    section = paired_section(results, *paired_payload(results)[1:])
    assert "### In the paper's terms: against the pools' Best-of-N curve" in section
    assert "### The same figures resampling pairs as if independent" in section


def test_a_pair_is_placed_on_a_curve_without_its_own_seed_s_candidates(results):
    from dataclasses import replace

    # Say p0's pool held seed 1's candidates in its top half: seed 1's pairs must not see them.
    pool = results.pools[0]
    order = np.argsort(pool.scores)
    sources = [0] * pool.size
    for rank, i in enumerate(order):
        sources[i] = 1 if rank >= pool.size // 2 else 0
    tagged = replace(results, pool_seeds={pool.prompt_id: sources})
    plain = {s.variant: s for s in summarize_pairs(results, resamples=100)}[FIXED]
    left_out = {s.variant: s for s in summarize_pairs(tagged, resamples=100)}[FIXED]
    # Without the best half for seed 1, the curve lies lower, so the same rewards reach a larger N.
    assert left_out.equivalent_n.estimate.n > plain.equivalent_n.estimate.n


def test_partial_rewards_are_compared_with_the_same_candidates_final_rewards():
    from dataclasses import replace

    from bench.paired.report import _agreement_section
    from bench.paired.partial_agreement import partial_agreement

    finals = [0.1, 0.9, 0.5, 0.3]
    points = [{"token_position": 4, "candidates": [[0, 0.0, False, False], [1, 3.0, False, True],
                                                   [2, 2.0, True, True], [3, 1.0, False, False]]},
              {"token_position": 8, "candidates": [[1, 1.0, False, False], [2, 2.0, True, True]]}]
    pairs = [Pair(prompt, 1, 4, FIXED, replace(run(2, 0.5, 10, 10, 1.0), partial_scores=points),
                  replace(run(1, 0.9, 20, 20, 2.0), candidate_rewards=finals), reward_scorer="judge (tiny)")
             for prompt in ("p0", "p1")]
    first, second = partial_agreement(pairs, resamples=50)
    assert (first.reward_scorer, first.token_position, first.decision_points) == ("judge (tiny)", 4, 2)
    assert first.kendall_tau.estimate == pytest.approx(1.0)  # partial order 1 > 2 > 3 > 0, as the final one
    assert (first.winner_live_share, first.winner_running_share, first.winner_kept_share) == (1.0, 1.0, 1.0)
    assert second.kendall_tau.estimate == pytest.approx(-1.0) and second.winner_kept_share == 0.0
    table = _agreement_section([first, second])
    assert "| judge (tiny) | 4 | double-4, α=0.5 | 4 | 2 | 4.00 | 1.00 [1.00, 1.00] | 100% | 100% | 100% |" in table


def test_a_decision_point_s_kept_candidates_are_those_scored_again():
    from bench.paired.experiment import partial_scores

    calls = [[(0, False, 0.1), (1, False, 0.7), (2, True, 0.4)], [(1, False, 0.8), (2, True, 0.4)], [(1, True, 0.9)]]
    assert partial_scores(calls, [4, 8]) == [
        {"token_position": 4, "candidates": [[0, 0.1, False, False], [1, 0.7, False, True], [2, 0.4, True, True]]},
        {"token_position": 8, "candidates": [[1, 0.8, False, True], [2, 0.4, True, False]]},
    ]
    with pytest.raises(ValueError, match="reward calls"):
        partial_scores(calls, [4])


def test_pools_without_pairs_report_that_no_pair_ran(results):
    from dataclasses import replace

    empty = replace(results, pairs=[])
    assert "No pairs were run." in paired_section(empty, *paired_payload(empty)[1:])


def test_one_prompt_s_point_intervals_are_called_what_they_are(results):
    from dataclasses import replace

    one_prompt = replace(results, pairs=[p for p in results.pairs if p.prompt_id == "p0"])
    section = paired_section(one_prompt, *paired_payload(one_prompt)[1:])
    assert "with one prompt, resampling prompts shows no spread at all" in section
    assert "no spread at all" not in paired_section(results, *paired_payload(results)[1:])


def test_the_win_rate_at_equal_compute_is_each_pair_s_chance_against_best_of_n_of_as_many_tokens(results):
    from bench.stats.order_stats import win_probability

    by_variant = {s.variant: s for s in summarize_pairs(results, resamples=200)}
    # Above every pool sample: it beats any Best-of-N.
    assert by_variant[GREEDY].win_rate_at_equal_compute.estimate == 1.0
    # 400 decoded tokens at 100 per pool sample: against Best-of-4 of the prompt's pool.
    fixed = [p for p in results.pairs if p.variant == FIXED]
    pools = {pool.prompt_id: pool.scores for pool in results.pools}
    expected = np.mean([win_probability(pools[p.prompt_id], p.sr.reward, 4) for p in fixed])
    win = by_variant[FIXED].win_rate_at_equal_compute
    assert win.estimate == pytest.approx(expected) and 0 < win.low <= win.estimate <= win.high < 1
    section = paired_section(results, *paired_payload(results)[1:])
    (greedy_row,) = [line for line in section.splitlines() if line.startswith(f"| {N0} | double-4 | α = 0.9 | 6 | 200 |")]
    assert greedy_row.endswith("| 100.0% [100.0%, 100.0%] |")


def test_a_refilled_variant_is_reported_as_its_own_rule(results):
    from dataclasses import replace

    refill = Variant("double-4", 0.5, refill=True)
    assert refill.label == "double-4, α=0.5, refill" and refill != FIXED
    branched = replace(results, pairs=results.pairs + [replace(p, variant=refill) for p in results.pairs
                                                       if p.variant == FIXED])
    summaries = {s.variant: s for s in summarize_pairs(branched, resamples=100)}
    assert summaries[refill].pairs == 6
    assert f"| {N0} | double-4 | α = 0.5, refill | 6 |" in paired_section(branched, *paired_payload(branched)[1:])


def test_a_reward_gap_within_float_rounding_of_zero_reads_as_zero(results):
    # The same response, scored incrementally by SR and in one pass for Best-of-n0, differs by ~1e-8.
    ties = PairedResults([Pair(p.prompt_id, p.seed, p.n0, p.variant, run(3, p.bon.reward + 4e-8, 400, 600, 2.0),
                               p.bon) for p in results.pairs if p.variant == ADAPTIVE],
                         results.pools, results.max_new_tokens, results.kv_budget_bytes, results.kv_bytes_per_token)
    section = paired_section(ties, *paired_payload(ties)[1:])
    assert "| 6 of 6, 100.0% [54.1%, 100.0%]; text 100% | 0 [0, 0] |" in section
    assert "0.00000004" not in section
