"""python -m bench.efficiency.headline on the tiny model: Speculative Rejection through the three
services against plain vLLM Best-of-N plus scoring, paired by prompt and seed."""
import json

import pytest

from bench.efficiency.headline import parse_args, run as run_headline
from bench.shared.figures import write_figures


def test_each_prompt_and_seed_gives_a_timed_pair_scored_by_the_same_reward(vllm_backend, vllm_model_dir, run,
                                                                          tmp_path):
    args = parse_args(["--model", str(vllm_model_dir), "--prompt-count", "2", "--seeds", "0,1", "--n", "4",
                       "--max-new-tokens", "16", "--out", str(tmp_path)])
    write_figures("bench.efficiency.headline", run(run_headline(args, plain=vllm_backend.engine)), args.out)
    written = json.loads((tmp_path / "headline.json").read_text())
    pairs = written["pairs"]
    assert [(p["prompt"], p["seed"]) for p in pairs] == [(pairs[0]["prompt"], 0), (pairs[0]["prompt"], 1),
                                                         (pairs[2]["prompt"], 0), (pairs[2]["prompt"], 1)]
    assert [p["order"] for p in pairs] == [["sr", "bon"], ["bon", "sr"]] * 2
    for pair in pairs:
        for side in ("sr", "bon"):
            assert pair[side]["seconds"] > 0 and pair[side]["score"] < 0 and 4 <= pair[side]["decoded"] <= 4 * 16
        # What the engine decoded covers what the coordinator heard of (more where candidates ran ahead).
        assert pair["sr"]["engine_decoded"] >= pair["sr"]["decoded"]
    ratio = written["best_of_n_plus_scoring_over_sr_seconds"]
    assert ratio["low"] <= ratio["estimate"] <= ratio["high"]
    assert written["prompts"] == 2 and written["n"] == 4
    scoring_rate = written["scoring_rate_over_plain_vllm_generation_rate"]
    assert scoring_rate["estimate"] == pytest.approx(
        sum(p["bon"]["generate_seconds"] for p in pairs) / sum(p["bon"]["seconds"] - p["bon"]["generate_seconds"] for p in pairs))
    assert "stack_best_of_n_generation_over_plain_vllm_generation" not in written
    # The same command again finds every pair in the journal: nothing is measured again (no stack
    # is started), and the figures are the same.
    again = run(run_headline(args, plain=None))
    assert again["pairs"] == pairs
    assert again["best_of_n_plus_scoring_over_sr_seconds"]["estimate"] == ratio["estimate"]


def test_the_stacks_best_of_n_is_a_third_side_timed_against_plain_vllm(vllm_backend, vllm_model_dir, run, tmp_path):
    args = parse_args(["--model", str(vllm_model_dir), "--prompt-count", "1", "--seeds", "0,1,2", "--n", "4",
                       "--max-new-tokens", "16", "--stack-best-of-n", "--out", str(tmp_path)])
    written = run(run_headline(args, plain=vllm_backend.engine))
    # Each side takes each place once over three turns.
    assert [p["order"] for p in written["pairs"]] == [["sr", "bon", "stack_bon"], ["bon", "stack_bon", "sr"],
                                                      ["stack_bon", "sr", "bon"]]
    for pair in written["pairs"]:
        stack_bon = pair["stack_bon"]
        assert stack_bon["engine_decoded"] >= stack_bon["decoded"] >= 4 and stack_bon["score"] < 0
        assert 0 < stack_bon["generate_seconds"] < stack_bon["seconds"]
    ratio = written["stack_best_of_n_generation_over_plain_vllm_generation"]
    assert 0 < ratio["low"] <= ratio["estimate"] <= ratio["high"]
    same = written["sr_same_response_as_stack_best_of_n"]
    assert same["pairs"] == 3
    assert same["same"] == sum(p["sr"]["text"] == p["stack_bon"]["text"] for p in written["pairs"])
    assert 0 <= same["exact_interval"]["low"] <= same["same"] / 3 <= same["exact_interval"]["high"] <= 1
    assert written["stack_best_of_n_over_sr_seconds"]["estimate"] > 0
    # One prompt: each seed's mean gap over plain vLLM's Best-of-N is that seed's only pair.
    gaps = {str(p["seed"]): {side: p[side]["score"] - p["bon"]["score"] for side in ("sr", "stack_bon")}
            for p in written["pairs"]}
    assert written["reward_gap_by_seed"].keys() == gaps.keys()
    for seed, gap in gaps.items():
        assert written["reward_gap_by_seed"][seed] == pytest.approx(gap)
    stack_gap = written["reward_gap_stack_best_of_n_minus_best_of_n"]
    assert stack_gap["estimate"] == pytest.approx(sum(g["stack_bon"] for g in gaps.values()) / 3)
