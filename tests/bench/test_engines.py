"""python -m bench.throughput.engines on the tiny model: four engines, the same tokens each."""
import json

from bench.throughput.engines import ENGINES, measure, parse_args
from bench.shared.figures import write_figures


def test_every_engine_decodes_every_shape_and_the_ratios_are_reported(vllm_backend, vllm_model_dir, run, tmp_path):
    args = parse_args(["--model", str(vllm_model_dir), "--shapes", "2x4,4x8", "--repeats", "2", "--out", str(tmp_path)])
    figures = run(measure(args, vllm=vllm_backend))
    write_figures("bench.throughput.engines", figures, args.out)
    written = json.loads((tmp_path / "engines.json").read_text())
    assert [(row["n"], row["tokens"]) for row in written["rows"]] == [(2, 4), (4, 8)]
    for row in written["rows"]:
        assert all(row[f"{engine} tokens/s"] > 0 for engine in ENGINES)
        assert row["vllm backend / plain vLLM"] > 0 and row["vllm backend / native backend"] > 0
