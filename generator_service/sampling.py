"""Batch-invariant sampling.

Every sequence draws one uniform number per position from a counter-based hash of
(seed, sequence index, position) and picks its token by inverse-CDF over the filtered
probabilities. No generator state is shared between rows, so removing other rows from the batch
never changes what a row samples.
"""
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31, so a 32-bit value times one never overflows int64.
_MUL1 = 0x7FEB352D
_MUL2 = 0x5BD1E995


# Temperatures below this are greedy. A token can only be drawn if its probability is above the
# uniform numbers' resolution (2**-32), i.e. if its logit is within 32 ln 2 x T ~ 22 T of the best;
# below 1e-4 that is 2e-3, the size of float32 rounding differences between kernels, so the choice
# would be noise among near-ties. Far lower (T < ~1e-35) logits / T overflow float32 to inf and the
# softmax returns NaN, which would pick the last token of the vocabulary every time.
MIN_TEMPERATURE = 1e-4

# Rows are sampled this many at a time: each row's draw is its own, and a block's temporaries (per
# row, float32 and float64 copies over the vocabulary) stay a few tens of MB however many rows there are.
SAMPLE_BLOCK_ROWS = 32


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 (or below MIN_TEMPERATURE) = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    seed: int = 0


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _MASK32
    return x ^ (x >> 16)


def uniforms(seed: int, sequence_index: torch.Tensor, position: int) -> torch.Tensor:
    """One float64 in (0, 1) per sequence, a pure function of (seed, index, position)."""
    h = _mix32(torch.full_like(sequence_index, seed & _MASK32))
    h = _mix32(h ^ ((seed >> 32) & _MASK32))
    h = _mix32(h ^ sequence_index)
    h = _mix32(h ^ (position & _MASK32))
    return (h.to(torch.float64) + 0.5) / 2.0**32


def sample(logits: torch.Tensor, uniform: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Pick one token per row of `logits` [rows, vocab] with the row's own uniform number."""
    rows = logits.shape[0]
    if rows <= SAMPLE_BLOCK_ROWS:
        return _sample_rows(logits, uniform, params)
    return torch.cat([_sample_rows(logits[first:first + SAMPLE_BLOCK_ROWS], uniform[first:first + SAMPLE_BLOCK_ROWS],
                                   params) for first in range(0, rows, SAMPLE_BLOCK_ROWS)])


def _sample_rows(logits: torch.Tensor, uniform: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if params.temperature < MIN_TEMPERATURE:
        return logits.argmax(dim=-1)
    scaled = logits.float() / params.temperature
    candidates = None  # token ids of the columns of `scaled`, when they are not the vocabulary order
    if params.top_k and params.top_k < scaled.shape[-1]:
        scaled, candidates = scaled.topk(params.top_k, dim=-1)
    elif params.top_p < 1.0:
        scaled, candidates = scaled.sort(dim=-1, descending=True)
    probs = scaled.softmax(dim=-1)
    if params.top_p < 1.0:
        # Keep the smallest prefix of the sorted tokens whose mass reaches top_p (always >= 1 token).
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= params.top_p, 0.0)
    cdf = probs.double().cumsum(dim=-1)
    target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    picked = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
    if candidates is None:
        return picked
    return candidates.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
