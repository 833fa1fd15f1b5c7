"""python -m bench.throughput.scoring_throughput on the tiny model: scoring what vLLM generated."""
import json

from bench.shared.figures import write_figures
from bench.throughput.scoring_throughput import measure, parse_args


def test_the_scoring_benchmark_scores_what_vllm_generated_reading_the_prompt_once(vllm_backend, vllm_model_dir,
                                                                                   run, tmp_path):
    # --cpu-threads 0: this test process keeps torch's thread count (the engine is the tests' own).
    args = parse_args(["--model", str(vllm_model_dir), "--responses", "6", "--max-new-tokens", "12",
                       "--cpu-threads", "0", "--repeats", "2", "--out", str(tmp_path)])
    write_figures("bench.throughput.scoring_throughput", run(measure(args, vllm=vllm_backend)), args.out)
    figures = json.loads((tmp_path / "scoring_throughput.json").read_text())
    assert figures["command"].startswith("python -m bench.throughput.scoring_throughput")
    assert figures["generator"] == "vLLM"
    assert figures["generated_tokens"] == 2 * 6 * 12
    # Each response up to its first end of turn, which is scored too.
    assert figures["response_tokens"] >= 2 * 6
    assert figures["tokens_read"] == figures["response_tokens"] + 2 * figures["prompt_tokens"]
    assert figures["generate_tokens_per_second"] > 0 and figures["score_tokens_per_second"] > 0
    assert figures["score_over_generate"] == figures["score_tokens_per_second"] / figures["generate_tokens_per_second"]
