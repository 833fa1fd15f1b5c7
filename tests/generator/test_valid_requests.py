"""Every valid request answers: many small random requests (n, lengths, schedules, rejection rates,
seeds) through the coordinator's Pipeline and the real generator engine on a tiny random model whose
end-of-sequence token is likely, so candidates finish at any token, the first one included."""
import asyncio
import random
import zlib

import pytest
import torch

from bench.shared.ports import InProcessSession
from coordinator.pipeline import Pipeline
from coordinator.request import Limits, plan_request
from generator_service.engine import GeneratorEngine
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import reward_pb2

# Each sampled token ends its sequence with about this probability.
EOS_PROBABILITY = 0.15


@pytest.fixture(scope="module")
def eos_prone_model_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random Llama whose every hidden state carries one large constant component that the
    end-of-sequence row of the output layer reads: EOS comes with about EOS_PROBABILITY per token."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    hidden = model.config.hidden_size
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0  # dominates the residual stream: ~sqrt(hidden) after the norm
        eos_row = model.lm_head.weight[tokenizer.eos_token_id]
        eos_row.zero_()
        odds = EOS_PROBABILITY / (1 - EOS_PROBABILITY) * len(tokenizer)
        eos_row[0] = float(torch.log(torch.tensor(odds))) / hidden ** 0.5
    folder = tmp_path_factory.mktemp("eos-prone-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(eos_prone_model_dir):
    engine = GeneratorEngine(str(eos_prone_model_dir), device="cpu", kv_cache_budget=16 * 1024**2, max_batch_size=16)
    yield engine
    engine.shutdown()


class HashReward:
    """A reward that is an arbitrary but fixed function of a response's text."""

    async def score(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
        return reward_pb2.ScoreResponse(
            scores=[zlib.crc32(item.response.encode()) / 2**32 for item in request.items],
            scored_tokens=sum(len(item.response) for item in request.items))


def random_request(rng: random.Random) -> tuple[pb.GenerateRequest, int | None]:
    """A valid request and, for memory-driven decision points, the session's KV budget in response tokens."""
    max_new_tokens = rng.randint(1, 24)
    fields = dict(prompt="Give three tips for staying healthy.", n=rng.randint(1, 8), max_new_tokens=max_new_tokens,
                  seed=rng.randrange(1 << 31), rejection_rate=rng.choice([0.0, 0.25, 0.5, 0.7, 0.9]),
                  adaptive_rejection=rng.random() < 0.2, return_top=rng.randint(1, 3),
                  temperature=rng.choice([0.0, 0.7, 1.0]), first_decision_tokens=0)
    if rng.random() < 0.1:
        fields["method"] = pb.BEST_OF_N
    kv_budget_tokens = None
    schedule = rng.choice(["every", "points", "doubling", "memory"])
    if schedule == "every":
        fields["decision_every_tokens"] = rng.randint(1, 6)
    elif schedule == "points":
        fields["decision_points"] = rng.sample(range(1, 30), rng.randint(1, 4))
    elif schedule == "doubling":
        fields["first_decision_tokens"] = rng.randint(1, 8)
    else:
        # Room for every candidate up to the first decision point (memory_round_tokens below), or to
        # the end when nothing is ever rejected.
        rejecting = fields["rejection_rate"] > 0 and "method" not in fields
        least = min(4, max_new_tokens) if rejecting else max_new_tokens
        kv_budget_tokens = fields["n"] * rng.randint(least, max(least, 8))
    return pb.GenerateRequest(**fields), kv_budget_tokens


def answer(engine, request: pb.GenerateRequest, kv_budget_tokens: int | None) -> pb.GenerateResponse:
    async def run():
        session = InProcessSession(engine, kv_budget_tokens)
        try:
            pipeline = Pipeline(plan_request(request, Limits(memory_round_tokens=4)), session, HashReward())
            await pipeline.start()
            return [event async for event in pipeline.events()][-1]
        finally:
            session.close()
    return asyncio.run(run())


def test_the_model_ends_candidates_at_their_first_token_sometimes(engine):
    """The condition the requests below must survive: some candidates end at prefill, others run on."""
    response = answer(engine, pb.GenerateRequest(prompt="Give three tips for staying healthy.", n=16,
                                                 max_new_tokens=8, seed=5, method=pb.BEST_OF_N, return_top=16), None)
    lengths = [c.num_tokens for c in response.ranked]
    assert 1 in lengths and max(lengths) > 1


@pytest.mark.parametrize("batch", range(4))
def test_every_valid_request_answers_with_a_finished_candidate(engine, batch):
    rng = random.Random(batch)
    for _ in range(40):
        request, kv_budget_tokens = random_request(rng)
        response = answer(engine, request, kv_budget_tokens)
        assert 1 <= len(response.ranked) <= request.return_top, request
        for candidate in response.ranked:
            assert candidate.finish_reason in ("stop", "length"), (request, candidate)
            assert 1 <= candidate.num_tokens <= request.max_new_tokens, (request, candidate)
        assert response.best == response.ranked[0]
