"""python -m bench.throughput.concurrent_sessions on the tiny model: sessions decoded together and alone."""
import json

from bench.throughput import concurrent_sessions


def test_sessions_decoded_together_give_the_tokens_they_give_alone(tiny_model_dir, tmp_path):
    concurrent_sessions.main(["--model", str(tiny_model_dir), "--device", "cpu", "--big-n", "4", "--big-tokens", "8",
                              "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "concurrent_sessions.json").read_text())
    assert figures["command"].startswith("python -m bench.throughput.concurrent_sessions")
    eight = figures["eight_sessions"]
    assert eight["sessions"] == 8 and eight["same_tokens"] is True
    assert eight["speedup"] == eight["one_after_another_s"] / eight["together_s"]
    assert figures["small_beside_big"]["big"] == {**figures["small_beside_big"]["big"], "n": 4, "tokens": 8}
