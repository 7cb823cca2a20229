"""Single-level vector quantizer: straight-through estimator, commitment, usage statistics, eval mode."""

import math

import pytest
import torch

from dualtoken_lite.quantizers.residual import ResidualQuantizer
from dualtoken_lite.quantizers.vector import VectorQuantizer, straight_through, usage_stats


def test_straight_through_forward_is_exactly_q_and_gradient_is_identity():
    z = torch.randn(10, 4, requires_grad=True)
    q = torch.randn(10, 4)
    out = straight_through(z, q)
    assert torch.equal(out, q)  # q + (z - z) is exactly q, unlike z + (q - z)
    weight = torch.randn(10, 4)
    (out * weight).sum().backward()
    torch.testing.assert_close(z.grad, weight)


def test_usage_stats_hand_example():
    utilisation, perplexity = usage_stats(torch.tensor([0, 0, 1, 2]), size=4)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert float(utilisation) == pytest.approx(0.75)
    assert float(perplexity) == pytest.approx(math.exp(entropy))
    _, uniform = usage_stats(torch.arange(8).repeat(3), size=8)
    assert float(uniform) == pytest.approx(8.0)  # uniform use of 8 codes: perplexity 8


@pytest.mark.parametrize("cosine", [False, True])
def test_vector_quantizer_gradients_and_commitment(cosine):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=5, codebook_size=16, cosine=cosine)
    z = torch.randn(3, 8, 5, requires_grad=True)
    out = vq(z)
    assert out.codes.shape == (3, 8) and out.quantized.shape == z.shape
    assert torch.equal(vq.decode(out.codes), out.quantized)
    (out.quantized.sum() + out.commitment).backward()
    q = vq.codebook.embed[out.codes]
    torch.testing.assert_close(z.grad, 1 + 2 * (z.detach() - q) / z.numel())


def test_vector_quantizer_equals_residual_quantizer_of_depth_one():
    data = [torch.randn(64, 4, generator=torch.Generator().manual_seed(i)) * (1 + i) for i in range(5)]
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 32, dead_code_threshold=2.0)
    torch.manual_seed(0)
    rq = ResidualQuantizer(4, 1, 32, dead_code_threshold=2.0)
    for x in data:
        a, b = vq(x), rq(x)
        assert torch.equal(a.codes, b.codes[..., 0]) and torch.equal(a.quantized, b.quantized)
        torch.testing.assert_close(a.commitment, b.commitment)
        assert vq.update_codebook() == rq.update_codebook()
    assert torch.equal(vq.codebook.embed, rq.codebooks[0].embed)


def test_eval_mode_accumulates_nothing():
    vq = VectorQuantizer(3, 8).eval()
    before = vq.codebook.embed.clone()
    vq(torch.randn(20, 3))
    assert vq.update_codebook()["updated"] == 0
    assert torch.equal(vq.codebook.embed, before)


@pytest.mark.parametrize(
    "z, match", [(torch.randn(2, 4), "3"), (torch.full((2, 3), float("nan")), "non-finite")]
)
def test_vector_quantizer_bad_input(z, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(3, 8)(z)


def test_vector_quantizer_bad_codes():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        VectorQuantizer(3, 8).decode(torch.tensor([8]))
