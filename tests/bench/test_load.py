"""The load benchmark's guard rails and report; one short run against the real services."""
import pytest

from bench.load.traffic import LoadConfig, check_loopback, percentile, report, run_load, speedups


def test_load_refuses_targets_off_this_machine():
    check_loopback("127.0.0.1:50050")
    check_loopback("[::1]:50050")
    check_loopback("localhost:50050")
    for target in ("10.0.0.7:50050", "192.168.1.2:50050", "8.8.8.8:443"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(target)


def test_percentiles_pick_observed_values():
    values = [0.5, 0.1, 0.3, 0.2, 0.4]
    assert percentile(values, 50) == 0.3
    assert percentile(values, 99) == 0.5
    assert percentile([], 50) != percentile([], 50)  # NaN when nothing was observed


def _level(n, clients, rps):
    return {"n": n, "clients": clients, "seconds": 10.0, "completed": int(rps * 10), "requests_per_second": rps,
            "tokens_per_second": rps * 100, "p50_s": 1.0, "p95_s": 2.0, "p99_s": 3.0, "codes": {"OK": int(rps * 10)},
            "health": {"checks": 100, "failures": 0, "p50_ms": 1.0, "p99_ms": 4.0, "max_ms": 9.0}}


def test_report_gives_speedups_over_one_client():
    levels = [_level(8, 1, 0.5), _level(8, 8, 2.0), _level(32, 1, 0.2), _level(32, 8, 0.3)]
    assert speedups(levels)[8][8] == pytest.approx(4.0)
    assert speedups(levels)[32][8] == pytest.approx(1.5)
    text = report({"command": "python -m bench --parts load", "levels": levels,
                   "identity": {"identical": True, "clients": 8},
                   "tiny_behind_large": {"tiny": [4, 16], "large": [128, 256], "alone_s": 1.0, "behind_large_s": 2.5,
                                         "ratio": 2.5, "large_s": 40.0, "samples_behind": 3},
                   "flood": {"sent": 96, "resource_exhausted": 30, "with_retry_hint": 30,
                             "time_to_resource_exhausted_max_s": 0.2, "time_to_resource_exhausted_p50_s": 0.05,
                             "send_seconds": 0.3}})
    assert "| 8 | 8 | 20 | 2.000 | 4.00 |" in text
    assert "**2.50x** its latency alone" in text
    assert "30 answered RESOURCE_EXHAUSTED (30 with a grpc-retry-pushback-ms hint)" in text


def test_report_says_when_the_large_request_failed():
    text = report({"command": "", "levels": [_level(8, 1, 0.5)], "identity": {"identical": True, "clients": 8},
                   "tiny_behind_large": {"tiny": [4, 16], "large": [128, 256], "alone_s": 1.0, "behind_large_s": 9.0,
                                         "ratio": 9.0, "large_s": 300.0, "large_code": "DEADLINE_EXCEEDED",
                                         "samples_behind": 3},
                   "flood": {"sent": 96, "resource_exhausted": 0, "with_retry_hint": 0,
                             "time_to_resource_exhausted_max_s": None, "time_to_resource_exhausted_p50_s": None,
                             "send_seconds": 0.3}})
    assert "the large request took 300.0 s and ended DEADLINE_EXCEEDED." in text


def test_a_short_load_run_against_the_real_services(tiny_stack):
    config = LoadConfig(clients=(1, 2), n=(4,), max_new_tokens=8, decision_every_tokens=4, seconds_per_level=2.0,
                        max_requests_per_level=20, tiny=(2, 4), large=(8, 64), flood_requests=8, timeout=60.0)
    results = run_load(tiny_stack.coordinator.address, config)
    assert [level["clients"] for level in results["levels"]] == [1, 2]
    assert all(level["completed"] >= 1 and set(level["codes"]) == {"OK"} for level in results["levels"])
    assert all(level["health"]["failures"] == 0 and level["health"]["checks"] > 0 for level in results["levels"])
    assert results["identity"]["identical"]
    assert results["tiny_behind_large"]["alone_s"] > 0 and results["tiny_behind_large"]["large_code"] == "OK"
