"""python -m bench.load.score_ahead on the tiny model: real services, one coordinator per setting."""
import json

from bench.load import score_ahead


def test_the_score_ahead_benchmark_compares_settings_on_the_same_requests(tiny_model_dir, tmp_path):
    score_ahead.main(["--model", str(tiny_model_dir), "--score-ahead", "0", "4", "--seeds", "0", "1",
                      "--n", "8", "--max-new-tokens", "40", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "score_ahead.json").read_text())
    assert figures["command"].startswith("python -m bench.load.score_ahead")
    assert figures["same_best_response_every_setting"] is True
    alone, ahead = figures["settings"]["0"], figures["settings"]["4"]
    assert alone["requests"] == ahead["requests"] == 2
    assert 0 < ahead["score_share"] < 1 and 0 < alone["score_share"] < 1
    assert alone["scored_tokens"] <= ahead["scored_tokens"] <= 1.1 * alone["scored_tokens"]
