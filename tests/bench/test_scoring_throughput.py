"""python -m bench.throughput.scoring_throughput on the tiny model: generating and scoring the same responses."""
import json

from bench.throughput import scoring_throughput


def test_the_scoring_benchmark_scores_what_it_generated_reading_the_prompt_once(tiny_model_dir, tmp_path):
    scoring_throughput.main(["--model", str(tiny_model_dir), "--responses", "6", "--max-new-tokens", "12",
                             "--repeats", "2", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "scoring_throughput.json").read_text())
    assert figures["command"].startswith("python -m bench.throughput.scoring_throughput")
    assert figures["generated_tokens"] == 2 * 6 * 12
    # Each response up to its first end of turn, which is scored too.
    assert figures["response_tokens"] >= 2 * 6
    assert figures["tokens_read"] == figures["response_tokens"] + 2 * figures["prompt_tokens"]
    assert figures["generate_tokens_per_second"] > 0 and figures["score_tokens_per_second"] > 0
    assert figures["score_over_generate"] == figures["score_tokens_per_second"] / figures["generate_tokens_per_second"]
