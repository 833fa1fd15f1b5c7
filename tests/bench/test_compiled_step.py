"""python -m bench.throughput.compiled_step on the tiny model: one decode step eager and compiled."""
import json

import pytest

from bench.throughput import compiled_step


@pytest.mark.compile
def test_the_compiled_step_benchmark_times_each_row_count_both_ways(tiny_model_dir, tmp_path):
    compiled_step.main(["--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--rows", "2",
                        "--repeats", "2", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "compiled_step.json").read_text())
    assert figures["command"].startswith("python -m bench.throughput.compiled_step")
    assert figures["device"] == "cpu" and figures["dtype"] == "torch.float32"
    (row,) = figures["rows"].values()
    assert list(figures["rows"]) == ["2"]
    assert row["eager_over_compiled"] == row["eager_ms"] / row["compiled_ms"]
    assert row["compile_s"] > 0
