import json

import pytest

from bench.shared.config import DOUBLE, EVERY, MEMORY, PRESETS, QUICK, Schedule, parse_schedule
from bench.efficiency.experiment import schedule_arguments
from bench.paired.experiment import variants
from bench.shared.prompts import DEFAULT_PROMPTS, load_prompts
from coordinator.request import DEFAULT_REJECTION_RATE
from coordinator.schedule import DEFAULT_FIRST_DECISION_TOKENS


@pytest.mark.parametrize("text, schedule", [
    ("memory", Schedule(MEMORY, 0)), ("memory-128", Schedule(MEMORY, 128)), ("every-16", Schedule(EVERY, 16)),
    ("double-32", Schedule(DOUBLE, 32)),
])
def test_schedules_parse_and_keep_their_names(text, schedule):
    assert parse_schedule(text) == schedule
    assert schedule.name == text


@pytest.mark.parametrize("text", ["every", "every-0", "fixed-8", "memory-x", "double", "double-0"])
def test_bad_schedules_are_refused(text):
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_memory_budget_puts_the_first_decision_point_at_budget_over_n():
    # Memory schedules ask for memory-driven decision points only (first_decision_tokens = 0), since a
    # request that names no schedule gets the coordinator's doubling one.
    assert schedule_arguments(Schedule(MEMORY, 128), 16) == {
        "every_tokens": 0, "first_decision_tokens": 0, "kv_budget_tokens": 128, "memory_round_tokens": 8}
    assert schedule_arguments(Schedule(EVERY, 16), 16)["every_tokens"] == 16
    assert schedule_arguments(Schedule(MEMORY), 16)["kv_budget_tokens"] is None
    assert schedule_arguments(Schedule(MEMORY), 16)["first_decision_tokens"] == 0
    doubling = schedule_arguments(Schedule(DOUBLE, 32), 16)
    assert (doubling["every_tokens"], doubling["first_decision_tokens"], doubling["kv_budget_tokens"]) == (0, 32, None)


@pytest.mark.parametrize("preset", ["paired-small", "paired-cpu", "paired-cpu-heldout", "gpu-paired"])
def test_paired_presets_are_valid_and_pool_at_least_four_times_n0(preset):
    config = PRESETS[preset]
    config.check()
    assert config.pool_size >= 4 * max(config.n) and (config.adaptive_rates or config.refill_rates)


def test_the_held_out_measurement_runs_on_prompts_the_in_sample_one_never_saw():
    in_sample, held_out = PRESETS["paired-cpu"], PRESETS["paired-cpu-heldout"]
    assert held_out.first_prompt >= in_sample.first_prompt + in_sample.prompts
    # Its variants were chosen on the in-sample pairs, and are among them or branch from the default.
    assert {(v.schedule, v.rejection_rate, v.refill) for v in variants(held_out)} == {
        ("double-64", 0.7, False), ("double-48", 0.7, False), ("double-64", 0.7, True)}
    assert (held_out.n, held_out.max_new_tokens, held_out.seeds) == (in_sample.n, in_sample.max_new_tokens, in_sample.seeds)


@pytest.mark.parametrize("preset", ["paired-cpu", "paired-cpu-heldout", "gpu-paired"])
def test_the_paired_measurements_run_the_coordinators_default_first(preset):
    # A paired run stopped early has whole variants in order: the headline must be the default's.
    first = variants(PRESETS[preset])[0]
    assert (first.schedule, first.rejection_rate, first.adaptive) == (
        f"double-{DEFAULT_FIRST_DECISION_TOKENS}", DEFAULT_REJECTION_RATE, False)


def test_config_refuses_a_budget_smaller_than_n():
    with pytest.raises(ValueError, match="memory-8"):
        QUICK.with_overrides(schedules=(Schedule(MEMORY, 8),)).check()
    QUICK.check()


def test_prompts_from_json_list_objects_and_json_lines(tmp_path):
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps([{"prompt": "a"}, "b", {"instruction": "c", "input": "d"}, {"text": "e"}]))
    assert [(p.id, p.text) for p in load_prompts(listed)] == [("0", "a"), ("1", "b"), ("2", "c\n\nd"), ("3", "e")]
    assert [p.text for p in load_prompts(listed, 2)] == ["a", "b"]
    # A held-out set starts later in the file and keeps the file's positions as ids.
    assert [(p.id, p.text) for p in load_prompts(listed, 2, first=2)] == [("2", "c\n\nd"), ("3", "e")]
    assert [p.id for p in load_prompts(listed, first=1)] == ["1", "2", "3"]
    with pytest.raises(ValueError, match="none from position 4"):
        load_prompts(listed, 2, first=4)
    lines = tmp_path / "prompts.jsonl"
    lines.write_text('{"prompt": "x"}\n\n{"question": "y"}\n')
    assert [p.text for p in load_prompts(lines)] == ["x", "y"]
    empty = tmp_path / "bad.json"
    empty.write_text(json.dumps([{"answer": "no prompt here"}]))
    with pytest.raises(ValueError, match="no field"):
        load_prompts(empty)


@pytest.mark.skipif(not DEFAULT_PROMPTS.exists(), reason="the shared AlpacaFarm prompts are not here")
def test_default_prompt_file_loads():
    prompts = load_prompts(DEFAULT_PROMPTS, 3)
    assert len(prompts) == 3 and all(p.text for p in prompts)
