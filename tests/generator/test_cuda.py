"""The decoder and engine on CUDA in bfloat16, as in production (skipped without a GPU)."""
import pytest
import torch

from generator_service.decoder import CausalDecoder, Segment
from generator_service.engine import GeneratorEngine
from generator_service.kv_cache import RowKVCache
from tests.generator.scripted import POEM, SCRIPTS, play, play_together

pytestmark = pytest.mark.cuda


def close_in_bfloat16(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    ours, theirs = ours.float(), theirs.float()
    return bool(((ours - theirs).abs() <= 0.02 + 0.02 * theirs.abs()).all())


@torch.inference_mode()
def test_decoder_logits_match_hugging_face_on_cuda_in_bfloat16(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).to("cuda").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    decoder = CausalDecoder(model, row_block=32)
    prompt = tokenizer.apply_chat_template(POEM, add_generation_prompt=True, return_tensors="pt").input_ids[0].to("cuda")
    prefix = decoder.new_prefix(prompt.shape[0])
    first = decoder.prefill_chunk(prompt[:20], prefix, 0)  # two chunks: the second attends to the first
    first = decoder.prefill_chunk(prompt[20:], prefix, 20)
    assert close_in_bfloat16(first, model(prompt[None]).logits[0, -1])
    token = first.argmax()
    cache = RowKVCache.for_decoder(decoder)
    cache.allocate(rows=3, capacity=4)
    tokens = torch.zeros(32, dtype=torch.long, device="cuda")
    tokens[:3] = token
    positions = torch.full((32,), prompt.shape[0], dtype=torch.long, device="cuda")
    logits = decoder.decode_step(tokens, positions, [Segment(0, 3, prefix, cache, 0)])
    expected = model(torch.cat((prompt, token[None]))[None]).logits[0, -1]
    for row in range(3):
        assert close_in_bfloat16(logits[row], expected)


@pytest.fixture(scope="module")
def cuda_engine(tiny_model_dir):
    engine = GeneratorEngine(str(tiny_model_dir), device="cuda", dtype="bfloat16", kv_cache_budget=256 * 1024**2,
                             prefill_chunk_tokens=32, compile="off")
    yield engine
    engine.shutdown()


def test_sessions_decoded_together_on_cuda_give_the_tokens_they_give_alone(cuda_engine):
    alone = {name: play(cuda_engine, name) for name in SCRIPTS}
    assert play_together(cuda_engine, list(SCRIPTS)) == alone


@pytest.mark.compile
def test_the_compiled_decode_step_on_cuda_gives_the_eager_tokens(tiny_model_dir, cuda_engine):
    compiled = GeneratorEngine(str(tiny_model_dir), device="cuda", dtype="bfloat16", kv_cache_budget=256 * 1024**2,
                               prefill_chunk_tokens=32, compile="on")
    try:
        assert compiled.compiled
        assert play_together(compiled, list(SCRIPTS)) == {name: play(cuda_engine, name) for name in SCRIPTS}
    finally:
        compiled.shutdown()
