"""The reader's own attention matches the Hugging Face forward pass for each supported decoder family
(grouped-query attention, q/k biases, q/k norms), reading in pieces across calls of a session;
a classifier on any other architecture is read whole by its own forward pass."""
import pytest
import torch

from reward_service.scorers import Item, LogprobScorer, Request
from reward_service.sessions import SessionCache
from tests.reward.conftest import MESSAGES, reference_scores

SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


def tiny(family: str, vocab_size: int):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, \
        Qwen3ForCausalLM

    torch.manual_seed(2)
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, **SIZES))
    if family == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab_size, head_dim=32, **SIZES))
    return MistralForCausalLM(MistralConfig(vocab_size=vocab_size, sliding_window=None, **SIZES))


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3"])
def test_each_family_scores_as_its_own_forward_pass(logprob, family):
    scorer = LogprobScorer(tiny(family, len(logprob.tokenizer)).eval(), logprob.tokenizer, token_budget=16)
    sessions = SessionCache(1 << 30)
    sessions.open("s")
    for responses, complete in ((["Figs", "Dates are"], [False, False]),
                                (["Figs are sweet.", "Dates are brown"], [True, False])):
        items = [Item(r, c, i) for i, (r, c) in enumerate(zip(responses, complete))]
        prompt, bodies = scorer.tokenize(MESSAGES, items)
        (scored,), _ = scorer.score([Request(prompt, bodies, [0, 1], "s")], sessions)
        assert scored.scores == pytest.approx(reference_scores(scorer, MESSAGES, responses, complete), abs=1e-4)


@pytest.fixture(scope="module")
def gpt2_classifier_dir(tmp_path_factory, logprob):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(3)
    tokenizer = logprob.tokenizer
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-gpt2-classifier")
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_classifier_on_another_architecture_is_recomputed_whole(gpt2_classifier_dir):
    from reward_service.engine import ScoringEngine
    from reward_service.scorers import load_scorer

    scorer = load_scorer("classifier", str(gpt2_classifier_dir), torch.device("cpu"), torch.float32, token_budget=64)
    engine = ScoringEngine(scorer, sessions=SessionCache(1 << 30), batch_window_seconds=0)
    try:
        responses, session = ["Figs", "Dates are brown and sweet."], engine.open_session()
        first = engine.submit(MESSAGES, [Item(r, True, i) for i, r in enumerate(responses)], session=session).result()
        again = engine.submit(MESSAGES, [Item(r, True, i) for i, r in enumerate(responses)], session=session).result()
        assert first.scores == pytest.approx(reference_scores(scorer, MESSAGES, responses, None), abs=1e-4)
        assert again.tokens == first.tokens  # nothing is kept: every call reads everything
        assert engine.sessions.nbytes == 0
    finally:
        engine.close()
