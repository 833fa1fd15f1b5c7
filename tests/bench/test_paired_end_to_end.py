"""`python -m bench --parts paired` on the tiny random model: pairs really share their initial candidates."""
import datetime
import json

import pytest

from bench.__main__ import main

PROMPTS = [{"prompt": "Name three primary colors."}, {"prompt": "What is the capital of France?"}]


def test_paired_part_pairs_sr_with_best_of_n0_from_the_same_candidates(tiny_model_dir, tmp_path):
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS))
    out = tmp_path / "results"
    main(["--preset", "paired-small", "--model", str(tiny_model_dir), "--prompts-file", str(prompts_file),
          "--out", str(out), "--prompts", "2", "--seeds", "1", "--n", "4", "--max-new-tokens", "16", "--pool", "8",
          "--schedules", "double-4,every-8", "--rejection-rates", "0.5,0", "--adaptive-rates", "0.5",
          "--refill-rates", "0.5", "--no-progress"])

    results = json.loads((out / "results.json").read_text())
    paired = results["paired"]
    assert [len(pool["scores"]) for pool in paired["pools"]] == [16, 16]  # at least 4 x n0
    # Only the paired part ran: its pools hold the Best-of-n0 runs' candidates, and the note says so.
    assert results["metadata"]["seeds"].startswith("paired: runs use seeds 1..1")
    assert "Best-of-n0 runs at the largest n0" in results["metadata"]["seeds"]
    pairs = paired["pairs"]
    # prompts x seeds x (the first schedule with both rates, the adaptive rule and refill; the other with the
    # first rate)
    assert len(pairs) == 2 * 1 * 5
    decoded = {(p["prompt_id"], p["variant"]["refill"]): p["sr"]["decoded_tokens"] for p in pairs
               if p["variant"]["schedule"] == "double-4" and p["variant"]["rejection_rate"] == 0.5
               and not p["variant"]["adaptive"]}
    # The rows a decision point freed were decoded again by branches: more tokens than without refill.
    assert sum(decoded[(prompt, True)] for prompt in ("0", "1")) > sum(decoded[(prompt, False)] for prompt in ("0", "1"))
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
    assert len(summaries) == 5
    for summary in summaries:
        assert summary["pairs"] == 2 and summary["prompts"] == 2
        assert 0 <= summary["win_rate_at_equal_compute"]["estimate"] <= 1
        assert summary["reward_gap"]["low"] <= summary["reward_gap"]["estimate"] <= summary["reward_gap"]["high"]
        assert summary["equivalent_n"]["estimate"]["n"] <= 4  # capped at n0
        if summary["variant"]["rejection_rate"] == 0 and not summary["variant"]["adaptive"]:
            assert summary["same_index"]["estimate"] == 1.0 and summary["decoded_ratio"]["estimate"] == 1.0
    assert len(paired["adaptive_comparisons"]) == 1  # on the first schedule
    markdown = (out / "results.md").read_text()
    assert "## Paired: Speculative Rejection against Best-of-n0 from the same candidates" in markdown
    assert "### Adaptive rejection against fixed rates" in markdown
    assert "| double-4 | α = 0.5, refill | 2 |" in markdown
    assert "## Reward and cost per configuration" not in markdown  # the efficiency part did not run


def _small_paired_run(model, tmp_path, out, *extra):
    """Two prompts x two seeds at n0 = 4, one variant; `extra` overrides."""
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS))
    main(["--preset", "paired-small", "--model", str(model), "--prompts-file", str(prompts_file), "--out", str(out),
          "--prompts", "2", "--seeds", "2", "--n", "4", "--max-new-tokens", "12", "--pool", "8",
          "--schedules", "double-4", "--rejection-rates", "0.5", "--adaptive-rates", "", "--no-progress", *extra])
    return json.loads((out / "results.json").read_text())


def _choices(results):
    return sorted((p["prompt_id"], p["seed"], p["sr"]["index"], p["sr"]["text"], p["bon"]["index"])
                  for p in results["paired"]["pairs"])


def test_a_stopped_paired_run_goes_on_where_it_stopped(tiny_model_dir, tmp_path):
    whole = tmp_path / "whole"
    whole_results = _small_paired_run(tiny_model_dir, tmp_path, whole)
    units = (whole / "paired-journal.jsonl").read_text().splitlines()
    # settings, then per prompt: a group of runs per seed (its Best-of-n0 feeds the pool), fresh samples to fill it
    assert [json.loads(line).get("key", "").split("/")[0] for line in units] == \
        ["", "group", "group", "pool", "group", "group", "pool"]
    assert [len(pool["scores"]) for pool in whole_results["paired"]["pools"]] == [16, 16]

    # A run killed while writing the second prompt's second group: what it finished is kept.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "paired-journal.jsonl").write_text("\n".join(units[:5]) + "\n" + units[5][: len(units[5]) // 2])
    results = _small_paired_run(tiny_model_dir, tmp_path, stopped, "--stop-after-minutes", "0")
    # The second prompt's pair of seed 1 waits for its pool, which needs the seed 2 group.
    assert sorted((p["prompt_id"], p["seed"]) for p in results["paired"]["pairs"]) == [("0", 1), ("0", 2)]
    note = results["metadata"]["paired runs"]
    assert note.startswith("report only: this run re-read the journal paired-journal.jsonl and ran nothing")
    assert "2 pairs of the 4 asked for" in note and "its units were journaled from " in note
    assert "total wall seconds" not in results["metadata"]

    results = _small_paired_run(tiny_model_dir, tmp_path, stopped)
    assert _choices(results) == _choices(whole_results)
    assert "all asked for" in results["metadata"]["paired runs"]
    journal = (stopped / "paired-journal.jsonl").read_text().splitlines()
    assert len([line for line in journal if line.endswith("}")]) == len(units)

    # Nothing left to run: every unit is read back, none run again.
    _small_paired_run(tiny_model_dir, tmp_path, whole)
    assert (whole / "paired-journal.jsonl").read_text().splitlines() == units


def test_a_journal_of_other_settings_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "results"
    _small_paired_run(tiny_model_dir, tmp_path, out, "--prompts", "1")
    with pytest.raises(ValueError, match=r"other settings \(max new tokens\)"):
        _small_paired_run(tiny_model_dir, tmp_path, out, "--prompts", "1", "--max-new-tokens", "16")


def test_a_variant_added_to_a_journal_runs_in_pairs_and_a_stopped_run_reports_every_pair_it_holds(
        tiny_model_dir, tmp_path):
    whole = tmp_path / "whole"
    whole_results = _small_paired_run(tiny_model_dir, tmp_path, whole, "--rejection-rates", "0.5,0.8")
    units = [json.loads(line) for line in (whole / "paired-journal.jsonl").read_text().splitlines()]
    # The first group ran before the first variant was added to the experiment.
    first_group = next(unit for unit in units[1:] if unit["key"].startswith("group/"))
    del first_group["value"]["sr"]["double-4, α=0.5"]
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    # Its lines carry no time, as in journals written before units were timestamped.
    (stopped / "paired-journal.jsonl").write_text(
        "\n".join(json.dumps({key: value for key, value in unit.items() if key != "time"}) for unit in units) + "\n")
    results = _small_paired_run(tiny_model_dir, tmp_path, stopped, "--rejection-rates", "0.5,0.8",
                                "--stop-after-minutes", "0")
    assert len(results["paired"]["pairs"]) == len(whole_results["paired"]["pairs"]) - 1 == 7
    assert sorted(s["pairs"] for s in results["paired"]["summaries"]) == [3, 4]
    assert "3 pairs" not in results["metadata"]["paired runs"] and "7 pairs of the 8" in results["metadata"]["paired runs"]
    assert results["metadata"]["paired runs"].endswith(
        f"its {len(units) - 1} units carry no time (journaled before its lines were timestamped)")

    # Carried on, the variant runs on that prompt and seed as a pair of its own, with the same answers.
    results = _small_paired_run(tiny_model_dir, tmp_path, stopped, "--rejection-rates", "0.5,0.8")
    assert _choices(results) == _choices(whole_results)
    added = [json.loads(line)["key"] for line in (stopped / "paired-journal.jsonl").read_text().splitlines()[len(units):]]
    assert added == [first_group["key"].replace("group/", "pair/") + "/double-4, α=0.5"]


def test_the_runs_of_a_prompt_and_seed_are_timed_together_and_record_partial_rewards(tiny_model_dir, tmp_path):
    out = tmp_path / "results"
    results = _small_paired_run(tiny_model_dir, tmp_path, out, "--rejection-rates", "0.5")
    settings, *lines = [json.loads(line) for line in (out / "paired-journal.jsonl").read_text().splitlines()]
    assert all(line["time"].endswith("+00:00") for line in lines)
    scorer = settings["settings"]["reward"]
    assert scorer.startswith("lm-logprob") and all(line["value"]["reward scorer"] == scorer for line in lines)
    groups = {line["key"]: line["value"] for line in lines if line["key"].startswith("group/")}
    assert len(groups) == 4
    # Best-of-n0 runs before SR on one seed of a prompt and after it on the other, and the runs of a
    # group follow each other.
    for prompt in ("0", "1"):
        assert {groups[f"group/{prompt}/seed {seed}/n0 4"]["sr first"] for seed in (1, 2)} == {True, False}
    for group in groups.values():
        (sr,) = group["sr"].values()
        bon = group["bon"]["outcome"]
        first, second = (sr, bon) if group["sr first"] else (bon, sr)
        assert first["started"] <= first["ended"] <= second["started"] <= second["ended"]
        finals = bon["candidate_rewards"]
        assert len(finals) == 4 and bon["reward"] == max(finals) == finals[bon["index"]]
        points = sr["partial_scores"]
        assert [p["token_position"] for p in points] == sr["decision_points"]
        for point, kept in zip(points, sr["survivors_per_round"]):
            assert sum(c[3] for c in point["candidates"]) == kept
            assert all(isinstance(c[1], float) and isinstance(c[2], bool) for c in point["candidates"])
        assert len(points[0]["candidates"]) == 4  # every initial candidate is scored at the first decision point
    # results.json keeps each run's totals and points to the journal for the per-candidate scores, so that it
    # does not hold them twice.
    for pair in results["paired"]["pairs"]:
        assert not {"partial_scores", "candidate_rewards"} & (pair["sr"].keys() | pair["bon"].keys())
        assert pair["sr"]["decision_points"] and pair["bon"]["decoded_tokens"] > 0
    assert results["paired"]["per_candidate_scores"].startswith("in paired-journal.jsonl")

    (agreement, *_) = results["paired"]["partial_agreement"]
    assert agreement["reward_scorer"] == scorer
    assert agreement["token_position"] == 4 and agreement["decision_points"] == 4
    assert -1 <= agreement["kendall_tau"]["estimate"] <= 1
    markdown = (out / "results.md").read_text()
    assert "### Partial against final rewards at each decision point" in markdown
    assert "| reward scorer | n0 | variant | token position |" in markdown
    assert "### In the paper's terms: against the pools' Best-of-N curve" in markdown

    report_only = _small_paired_run(tiny_model_dir, tmp_path, out, "--rejection-rates", "0.5",
                                    "--stop-after-minutes", "0")
    assert report_only["metadata"]["paired runs"].startswith("report only: this run re-read the journal")
    assert "total wall seconds" not in report_only["metadata"]
    # The journal's own span: from its first unit's line to its last one's.
    first, last = (datetime.datetime.fromisoformat(time).strftime("%Y-%m-%d %H:%M UTC")
                   for time in (lines[0]["time"], lines[-1]["time"]))
    assert report_only["metadata"]["paired runs"].endswith(f"its units were journaled from {first} to {last}")


def test_a_paired_run_with_the_judge_reward_records_it_on_every_run(tiny_model_dir, tmp_path):
    out = tmp_path / "results"
    results = _small_paired_run(tiny_model_dir, tmp_path, out, "--reward-scorer", "judge", "--seeds", "1")
    settings, *lines = [json.loads(line) for line in (out / "paired-journal.jsonl").read_text().splitlines()]
    scorer = settings["settings"]["reward"]
    assert scorer.startswith("judge") and all(line["value"]["reward scorer"] == scorer for line in lines)
    assert {pair["reward_scorer"] for pair in results["paired"]["pairs"]} == {scorer}
    assert f"| {scorer} | 4 | double-4, α=0.5 |" in (out / "results.md").read_text()
