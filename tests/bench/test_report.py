import json

from bench.report import summarize, write_report
from bench.stats.equivalence import compare_with_best_of_n


def test_summaries_cover_every_configuration(synthetic_results):
    summaries = summarize(compare_with_best_of_n(synthetic_results.runs, synthetic_results.pools))
    configs = {(s.method, s.n, s.rejection_rate, s.schedule) for s in summaries}
    assert configs == {run.config for run in synthetic_results.runs}
    by_config = {(s.method, s.n, s.rejection_rate, s.schedule): s for s in summaries}
    assert by_config[("sr", 16, 0.5, "memory")].runs == 6  # 3 prompts x 2 seeds
    assert by_config[("sr", 16, 0.5, "memory")].prompts == 3
    assert by_config[("sr", 64, 0.9, "memory")].at_least_m == 3
    assert by_config[("sr", 64, 0.9, "memory")].equivalent_n.max == 16


def test_writes_valid_json_with_every_raw_number(synthetic_results, tmp_path):
    json_path, _ = write_report(synthetic_results, tmp_path)
    payload = json.loads(json_path.read_text())
    assert len(payload["runs"]) == len(synthetic_results.runs)
    assert payload["pools"][0]["scores"] == synthetic_results.pools[0].scores
    assert payload["runs"][0]["survivors_per_round"] == synthetic_results.runs[0].survivors_per_round
    assert len(payload["summaries"]) == 5
    assert payload["best_of_n_reference"]["n"] == list(range(1, 17))
    assert payload["throughput"][0]["speedup"] > 0
    assert payload["overhead"][0]["ratio"] == 1.1
    assert payload["metadata"] == synthetic_results.metadata


def test_writes_markdown_tables(synthetic_results, tmp_path):
    _, md_path = write_report(synthetic_results, tmp_path)
    markdown = md_path.read_text()
    assert "| method | n | rejection rate | schedule |" in markdown
    assert "| sr | 16 | 0.5 | memory | 3 |" in markdown
    assert "| sr | 16 | 0.75 | every-32 | 3 |" in markdown
    assert "| bon | 8 | 0 | none | 3 |" in markdown
    assert "≥16" in markdown  # the run above every pool is only a lower bound
    assert "| batch size | prompt tokens | new tokens | engine tokens/s | generate() tokens/s | speedup |" in markdown
    assert "| 64 | 213 | 128 | 800 |" in markdown
    assert "| n=16, alpha=0.5, 64 tokens | 2.00 | 2.20 | 1.10× |" in markdown


def test_markdown_says_when_throughput_was_not_measured(synthetic_results, tmp_path):
    synthetic_results.throughput.clear()
    synthetic_results.overhead.clear()
    _, md_path = write_report(synthetic_results, tmp_path)
    assert md_path.read_text().count("Not measured in this run.") == 2
