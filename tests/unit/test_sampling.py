"""Batch-invariant sampling: a row's draw depends only on (seed, index, position)."""
import pytest
import torch

from generator_service.sampling import SAMPLE_BLOCK_ROWS, SamplingParams, sample, uniforms


def test_uniforms_are_a_pure_function_of_seed_index_and_position():
    index = torch.arange(64)
    first = uniforms(7, index, 3)
    assert torch.equal(first, uniforms(7, index, 3))
    # The same sequence gets the same number whatever other rows are present, in any order.
    subset = torch.tensor([40, 3, 17])
    assert torch.equal(uniforms(7, subset, 3), first[subset])
    assert not torch.equal(first, uniforms(8, index, 3))
    assert not torch.equal(first, uniforms(7, index, 4))
    assert ((first > 0) & (first < 1)).all()


def test_uniforms_use_the_high_bits_of_the_seed():
    index = torch.arange(8)
    assert not torch.equal(uniforms(1, index, 0), uniforms(1 + 2**40, index, 0))


def test_uniforms_look_uniform():
    values = uniforms(123, torch.arange(20000), 5)
    assert abs(values.mean().item() - 0.5) < 0.01
    histogram = torch.histc(values.float(), bins=10, min=0, max=1)
    assert (histogram > 1800).all() and (histogram < 2200).all()


def test_inverse_cdf_follows_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).expand(30000, -1)
    tokens = sample(logits, uniforms(0, torch.arange(30000), 0), SamplingParams())
    frequencies = torch.bincount(tokens, minlength=3).float() / 30000
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2]), atol=0.015)


def test_greedy_top_k_and_top_p_restrict_the_choice():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15])).expand(4000, -1)
    u = uniforms(1, torch.arange(4000), 0)
    assert (sample(logits, u, SamplingParams(temperature=0)) == 1).all()
    assert set(sample(logits, u, SamplingParams(top_k=2)).tolist()) == {1, 2}
    # top_p 0.75: the smallest prefix reaching 0.75 is {0.5, 0.3}.
    assert set(sample(logits, u, SamplingParams(top_p=0.75)).tolist()) == {1, 2}
    assert set(sample(logits, u, SamplingParams(top_p=0.01)).tolist()) == {1}


def test_a_row_samples_the_same_token_alone_or_in_a_batch():
    torch.manual_seed(0)
    logits = torch.randn(32, 1000)
    index = torch.arange(32)
    for params in (SamplingParams(), SamplingParams(top_k=50), SamplingParams(top_p=0.9, temperature=0.7)):
        batch = sample(logits, uniforms(9, index, 2), params)
        alone = torch.stack([sample(logits[i : i + 1], uniforms(9, index[i : i + 1], 2), params)[0] for i in range(32)])
        assert torch.equal(batch, alone)


@pytest.mark.parametrize("params", [SamplingParams(seed=3), SamplingParams(top_p=0.9, seed=4),
                                    SamplingParams(top_k=20, seed=5)])
def test_many_rows_sample_what_each_row_samples_alone(params):
    """Rows are sampled in blocks to bound memory; a row's token does not depend on its block."""
    logits = torch.randn(3 * SAMPLE_BLOCK_ROWS + 5, 1000, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(logits.shape[0])
    together = sample(logits, uniforms(params.seed, rows, 7), params)
    alone = [sample(logits[i:i + 1], uniforms(params.seed, rows[i:i + 1], 7), params).item() for i in range(len(rows))]
    assert together.tolist() == alone
