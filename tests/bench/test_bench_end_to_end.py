"""`python -m bench` end to end on the tiny random model: in process, and through the real services."""
import json

import pytest

from bench.__main__ import main
from common.local_stack import Stack

PROMPTS = [{"prompt": "Name three primary colors."}, {"prompt": "What is the capital of France?"},
           {"prompt": "Give me a tip for sleeping well."}]
FIGURES = ["reward_vs_cost.png", "survivors_per_round.png", "throughput.png"]


@pytest.fixture(scope="module")
def small_budget_stack(tiny_model_dir, service_logs):
    """The services on the tiny model, each session with 128KiB of KV cache (256 tokens)."""
    with Stack(service_logs, generator_args=("--model", str(tiny_model_dir), "--kv-cache-budget", "128KiB"),
               reward_args=("--model", str(tiny_model_dir))) as stack:
        yield stack


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


def test_quick_preset_in_process_writes_every_file(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "results"
    main(["--quick", "--model", str(tiny_model_dir), "--prompts-file", str(prompts_file), "--out", str(out),
          "--prompts", "2", "--pool", "8", "--n", "4", "--max-new-tokens", "16", "--schedules", "memory-16,every-4",
          "--seeds", "2", "--best-of-n", "4", "--throughput-batch-sizes", "2,4", "--throughput-new-tokens", "8",
          "--repeats", "2", "--no-progress"])

    assert sorted(p.name for p in out.iterdir()) == sorted(["results.json", "results.md", *FIGURES])
    payload = json.loads((out / "results.json").read_text())
    assert [len(pool["scores"]) for pool in payload["pools"]] == [8, 8]
    sr = [run for run in payload["runs"] if run["method"] == "sr"]
    assert len(sr) == 2 * 2 * 3 * 2  # prompts x seeds x rejection rates x schedules
    assert len(payload["runs"]) == len(sr) + 2 * 2  # and Best-of-4 per prompt and seed
    assert {run["seed"] for run in payload["runs"]} == {1, 2}  # never a pool seed (2^40 and up)
    assert payload["metadata"]["seeds"].startswith("efficiency: pools use seeds 2^40 + chunk, runs use seeds 1..2")
    for run in sr:
        assert 0 < run["decoded_tokens"] <= 4 * 16 and run["scored_tokens"] > 0 and run["wall_seconds"] > 0
        if run["schedule"] == "memory-16":
            # A 16-token budget for 4 candidates: the first decision point at 4 tokens.
            assert run["decision_points"][:1] == [4]
        else:
            assert all(point % 4 == 0 for point in run["decision_points"])
    assert [row["batch_size"] for row in payload["throughput"]] == [2, 4]
    assert all(row["engine_tokens_per_second"] > 0 and row["hf_generate_tokens_per_second"] > 0
               for row in payload["throughput"])
    (overhead,) = payload["overhead"]
    assert overhead["ratio"] > 0
    assert payload["metadata"]["gRPC overhead: identical results both ways"] is True
    markdown = (out / "results.md").read_text()
    assert "| sr | 4 | 0.5 | memory-16 | 2 |" in markdown
    assert "## Decision points" in markdown and "| 2 | " in markdown


def test_efficiency_through_the_grpc_services(small_budget_stack, tiny_model_dir, prompts_file, tmp_path):
    """With 256 tokens of KV cache per session a pool of
    16 x 32 tokens must be made in smaller chunks, and 8 candidates of 32 tokens hit a memory-driven
    decision point. The overhead part runs the same request on a local engine with the same budget."""
    out = tmp_path / "results"
    stack = small_budget_stack
    main(["--generator", stack.generator.address, "--reward", stack.reward.address,
          "--parts", "efficiency,overhead", "--model", str(tiny_model_dir), "--kv-cache-budget", "128KiB",
          "--prompts-file", str(prompts_file), "--out", str(out), "--prompts", "1", "--pool", "16", "--n", "8",
          "--max-new-tokens", "32", "--rejection-rates", "0.5", "--schedules", "memory,every-8", "--seeds", "1",
          "--best-of-n", "2", "--repeats", "1", "--no-progress"])

    payload = json.loads((out / "results.json").read_text())
    assert len(payload["pools"][0]["scores"]) == 16
    by_schedule = {run["schedule"]: run for run in payload["runs"] if run["method"] == "sr"}
    assert by_schedule["every-8"]["decision_points"][0] == 8
    assert 0 < by_schedule["memory"]["decision_points"][0] < 32  # the service's budget ran out first
    assert payload["metadata"]["backend"].startswith("grpc")
    assert payload["metadata"]["gRPC overhead: identical results both ways"] is True
    assert (out / "reward_vs_cost.png").exists() and not (out / "throughput.png").exists()


def test_per_run_budgets_are_refused_over_grpc(tmp_path):
    with pytest.raises(ValueError, match="memory-128"):
        main(["--generator", "127.0.0.1:1", "--reward", "127.0.0.1:2", "--quick", "--out", str(tmp_path),
              "--no-progress"])
