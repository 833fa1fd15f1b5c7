"""End to end with the real embedded SmolLM2-135M-Instruct in both model services."""
import json
import math

import pytest

from common.local_stack import ROOT
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc
from common.local_stack import Stack


@pytest.fixture(scope="module")
def default_stack(service_logs):
    # The default backend (vLLM), uncompiled to start sooner. A small KV budget makes memory-driven
    # decision points come early on a CPU.
    with Stack(service_logs, generator_args=("--backend", "vllm", "--compile", "off", "--kv-cache-budget", "24MiB")) as stack:
        yield stack


def test_speculative_rejection_on_an_alpacafarm_prompt(default_stack):
    prompt = json.loads((ROOT / "data" / "alpaca_farm_100.json").read_text())[3]["prompt"]
    stub = coordinator_pb2_grpc.CoordinatorStub(default_stack.channel)
    events = list(stub.GenerateStream(pb.GenerateRequest(prompt=prompt, n=12, max_new_tokens=64, seed=3,
                                                          return_top=3, first_decision_tokens=0, rejection_rate=0.5),
                                      timeout=600))
    result = events[-1].result
    rounds = result.stats.rounds
    assert len(rounds) >= 1 and len(events) == len(rounds) + 1
    assert rounds[0].trigger == "memory" and rounds[0].active_before == 12 and rounds[0].kept == 6
    best = result.best
    assert len(best.text.split()) >= 5, best.text
    assert best.text.isprintable() or "\n" in best.text
    # The default reward is the mean log-probability under SmolLM2 itself.
    assert -10 < best.score < 0 and math.isfinite(best.score)
    assert best.score >= max(c.score for c in result.ranked)
    # Rejection saved decoding: fewer tokens than 12 candidates run to the end would cost.
    assert result.stats.generated_tokens < 12 * 64
    assert result.stats.prompt_tokens > 30


@pytest.mark.parametrize("call", ["Generate", "GenerateStream"])
def test_a_candidate_that_ends_at_its_first_token_is_ranked_not_kept_running(default_stack, call):
    """With this seed one of the four candidates samples the end of its turn as its first token."""
    stub = coordinator_pb2_grpc.CoordinatorStub(default_stack.channel)
    request = pb.GenerateRequest(prompt="Give three tips for staying healthy.", n=4, max_new_tokens=24,
                                 decision_every_tokens=4, seed=167, method=pb.SPECULATIVE_REJECTION, return_top=4)
    answer = getattr(stub, call)(request, timeout=600)
    result = answer if call == "Generate" else list(answer)[-1].result
    assert result.stats.initial_n == 4 and result.stats.rounds
    assert result.best.finish_reason in ("stop", "length") and result.best.text
