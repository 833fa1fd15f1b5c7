"""`python -m bench --parts paired` on the tiny random model: pairs really share their initial candidates."""
import json

from bench.__main__ import main

PROMPTS = [{"prompt": "Name three primary colors."}, {"prompt": "What is the capital of France?"}]


def test_paired_part_pairs_sr_with_best_of_n0_from_the_same_candidates(tiny_model_dir, tmp_path):
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS))
    out = tmp_path / "results"
    main(["--preset", "paired-small", "--model", str(tiny_model_dir), "--prompts-file", str(prompts_file),
          "--out", str(out), "--prompts", "2", "--seeds", "1", "--n", "4", "--max-new-tokens", "16", "--pool", "8",
          "--schedules", "double-4,every-8", "--rejection-rates", "0,0.5", "--adaptive-rates", "0.5",
          "--no-progress"])

    paired = json.loads((out / "results.json").read_text())["paired"]
    assert [len(pool["scores"]) for pool in paired["pools"]] == [16, 16]  # at least 4 x n0
    pairs = paired["pairs"]
    assert len(pairs) == 2 * 1 * 2 * 3  # prompts x seeds x schedules x (two fixed rates + one adaptive)
    for pair in pairs:
        sr, bon, variant = pair["sr"], pair["bon"], pair["variant"]
        assert bon["decoded_tokens"] >= sr["decoded_tokens"] > 0
        if variant["rejection_rate"] == 0:
            # Rejecting nobody is Best-of-n0 itself: the very same candidates, so the very same answer.
            assert (sr["index"], sr["text"], sr["reward"]) == (bon["index"], bon["text"], bon["reward"])
            assert sr["decoded_tokens"] == bon["decoded_tokens"]
        elif variant["schedule"] == "double-4":
            assert sr["decision_points"][:2] == [4, 8]
        else:
            assert sr["decision_points"][:1] == [8]
    summaries = paired["summaries"]
    assert len(summaries) == 6
    for summary in summaries:
        assert summary["pairs"] == 2 and summary["prompts"] == 2
        assert summary["reward_gap"]["low"] <= summary["reward_gap"]["estimate"] <= summary["reward_gap"]["high"]
        assert summary["equivalent_n"]["estimate"]["n"] <= 4  # capped at n0
        if summary["variant"]["rejection_rate"] == 0 and not summary["variant"]["adaptive"]:
            assert summary["same_index"]["estimate"] == 1.0 and summary["decoded_ratio"]["estimate"] == 1.0
    assert len(paired["adaptive_comparisons"]) == 2  # one per schedule
    markdown = (out / "results.md").read_text()
    assert "## Paired: Speculative Rejection against Best-of-n0 from the same candidates" in markdown
    assert "### Adaptive rejection against fixed rates" in markdown
    assert "## Reward and cost per configuration" not in markdown  # the efficiency part did not run
