"""python -m bench.throughput.reward_sessions on the tiny model: scoring within a session against from scratch."""
import json

from bench.throughput import reward_sessions


def test_a_scoring_session_reads_fewer_tokens_than_scoring_from_scratch(tiny_model_dir, tmp_path):
    reward_sessions.main(["--model", str(tiny_model_dir), "--device", "cpu", "--n", "3", "--lengths", "8,16,32",
                          "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "reward_sessions.json").read_text())
    assert figures["command"].startswith("python -m bench.throughput.reward_sessions")
    assert figures["n"] == 3 and figures["decision_points"] == [8, 16, 32]
    recomputed, session = figures["recomputed"]["tokens"], figures["session"]["tokens"]
    # From scratch, every call reads each response so far; within a session only what is new since the last.
    assert recomputed >= 3 * (8 + 16 + 32) > session >= 3 * 32
    assert figures["tokens_ratio"] == recomputed / session
