"""Responses share one copy of their prompt's keys/values: scoring 16 responses to a long prompt
takes barely more memory than scoring one (measured as the process's peak resident memory)."""
import ctypes
import pathlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reward_service.scorers import LogprobScorer, Request
from reward_service.sessions import SessionCache

PROMPT_TOKENS = 2000
PEAK = pathlib.Path("/proc/self/status")


def peak_resident_bytes_during(work) -> int:
    """Peak resident memory while `work()` runs, above what was resident before it.

    Tensors over 1 MiB are given their own mapped pages, returned to the system when freed, so the
    resident size follows the live tensors instead of what the allocator keeps for reuse."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets the kernel's peak (VmHWM) to the current size

    def field(name: str) -> int:
        line = next(line for line in PEAK.read_text().splitlines() if line.startswith(name))
        return int(line.split()[1]) * 1024

    before = field("VmRSS:")
    work()
    return field("VmHWM:") - before


@pytest.fixture(scope="module")
def wide_kv_scorer(logprob):
    """A model whose keys/values are large next to its weights: 8 KiB per token, 16 MB for the prompt."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)
    return LogprobScorer(LlamaForCausalLM(config).eval(), logprob.tokenizer, token_budget=256)


def test_memory_does_not_grow_with_a_copy_of_the_prompt_per_response(wide_kv_scorer):
    scorer = wide_kv_scorer
    prompt = [(7 * i) % 1000 for i in range(PROMPT_TOKENS)]
    prompt_kv_bytes = PROMPT_TOKENS * 2 * 4 * 8 * 32 * 4
    # Within one session the prompt is read once, by the first call; each later call brings new
    # candidates, so what is measured is the responses' reading alone.
    sessions = SessionCache(1 << 30)
    sessions.open("s")

    def score(candidates: range):
        bodies = [[(11 * c + j) % 1000 for j in range(4)] for c in candidates]
        return lambda: scorer.score([Request(prompt, bodies, list(candidates), "s")], sessions)

    score(range(1))()
    one = peak_resident_bytes_during(score(range(1, 2)))
    sixteen = peak_resident_bytes_during(score(range(2, 18)))
    # The measure does see copies: 15 prompt copies made outright show up in full.
    copies = peak_resident_bytes_during(lambda: torch.ones(15 * prompt_kv_bytes, dtype=torch.uint8))
    assert copies > 0.9 * 15 * prompt_kv_bytes
    # What does grow with n is attention's scores ([head, n x new tokens, prompt], 4 MB here), bounded
    # by the token budget; 15 more prompt copies would add 240 MB.
    assert sixteen - one < 2 * prompt_kv_bytes, (one, sixteen)
