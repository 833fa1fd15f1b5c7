"""The fleet benchmark's bookkeeping and report; one short run of the whole harness on tiny models."""
import signal

import pytest

from bench.load.fleet import FleetConfig, Outcome, report, run_fleet, tally, windows


def test_requests_fall_in_the_window_they_were_answered_in():
    outcomes = [Outcome(1.0, "OK", 30, 10, 60), Outcome(12.0, "UNAVAILABLE"), Outcome(13.0, "OK", 50, 10, 30),
                Outcome(40.0, "OK", 20, 0, 20)]
    events = [{"replica": "generator-0", "signal": "SIGTERM", "at_s": 10.0},
              {"replica": "generator-0", "signal": "SIGKILL", "at_s": 30.0}]
    steady, term, kill = windows(outcomes, events)
    assert (steady["window"], steady["requests"], steady["codes"]) == ("steady", 1, {"OK": 1})
    assert (term["window"], term["codes"]) == ("SIGTERM generator-0", {"OK": 1, "UNAVAILABLE": 1})
    assert term["scored_over_generated"] == pytest.approx(0.5)
    assert kill["from_s"] == 30.0 and kill["requests"] == 1
    assert tally(outcomes)["scored_over_generated"] == pytest.approx(110 / 120)
    assert tally([Outcome(1.0, "UNAVAILABLE")])["scored_over_generated"] is None


def test_a_short_fleet_run_on_tiny_models(tiny_model_dir, tmp_path):
    config = FleetConfig(clients=2, n=2, max_new_tokens=8, decision_every_tokens=4, settle_seconds=1.0,
                         exit_timeout=60.0, request_timeout=30.0, pause_after_failure=0.2, max_requests=300,
                         coordinator_head_start=1.0, first_success_timeout=120.0, model=str(tiny_model_dir))
    results = run_fleet(config, tmp_path)
    events = results["rolling"]["events"]
    assert [(event["signal"], event["replica"]) for event in events] == [
        ("SIGTERM", "generator-0"), ("SIGTERM", "generator-1"), ("SIGTERM", "reward-0"), ("SIGTERM", "reward-1"),
        ("SIGKILL", "generator-0")]
    assert not any(event["killed_after_timeout"] for event in events)
    assert events[-1]["exit_code"] == -signal.SIGKILL
    total = results["rolling"]["total"]
    assert total["codes"].get("OK", 0) >= 1 and total["scored_over_generated"] > 0
    assert sum(window["requests"] for window in results["rolling"]["windows"]) == total["requests"]
    calls = results["rolling"]["calls_since_last_start"]
    assert set(calls) == {"generator-0", "generator-1", "reward-0", "reward-1"}
    first = results["first_success"]
    assert first["all_serving_s"] > first["upstreams_started_s"] >= config.coordinator_head_start
    assert first["first_ok_s"] is not None
    text = report(results)
    assert "| SIGKILL generator-0 |" in text and "- reward-1: " in text
    assert "First success once the upstreams come up" in text
