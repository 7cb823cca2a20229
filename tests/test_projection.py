"""AttnProjection (docs/method.md §2): shapes, head averaging vs concatenation, causality, exact parameter counts."""

import pytest
import torch

from dualtoken_lite.model.projection import AttnProjection, ProjectionAttention


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("in_dim,out_dim,causal", [(128, 32, False), (32, 128, True), (64, 64, False), (96, 8, False)])
def test_shapes(in_dim, out_dim, causal):
    proj = AttnProjection(in_dim, out_dim, head_dim=min(in_dim, out_dim, 32) if in_dim != 96 else 32, causal=causal)
    assert proj(torch.randn(2, 9, in_dim)).shape == (2, 9, out_dim)


@pytest.mark.parametrize("in_dim,out_dim,expected", [(1152, 32, 4_032_608), (32, 1152, 9_452_288)])
def test_paper_parameter_counts(in_dim, out_dim, expected):
    """docs/method.md §2: the released model's pre-quant and post-quant projection sizes, to the parameter."""
    assert n_params(AttnProjection(in_dim, out_dim, head_dim=32, causal=in_dim < out_dim)) == expected


def manual_attention(attn: ProjectionAttention, x: torch.Tensor) -> torch.Tensor:
    """Head by head with an explicit softmax, to check the batched implementation."""
    B, N, _ = x.shape
    wide = attn.heads * attn.head_dim
    q, k, v = torch.nn.functional.linear(x, attn.qkv.weight).split(wide, dim=-1)
    q, v = q + attn.q_bias, v + attn.v_bias
    outs = []
    for h in range(attn.heads):
        s = slice(h * attn.head_dim, (h + 1) * attn.head_dim)
        logits = q[..., s] @ k[..., s].transpose(1, 2) / attn.head_dim**0.5  # (B, N, N)
        if attn.causal:
            logits = logits.masked_fill(torch.ones(N, N).triu(1).bool(), float("-inf"))
        outs.append(logits.softmax(-1) @ v[..., s])  # (B, N, hd)
    a = torch.stack(outs).mean(0) if attn.squeeze else torch.cat(outs, dim=-1)
    return attn.proj(a)


@pytest.mark.parametrize("in_dim,out_dim,causal", [(128, 32, False), (32, 128, True), (32, 128, False)])
def test_attention_matches_head_by_head(in_dim, out_dim, causal):
    torch.manual_seed(0)
    attn = ProjectionAttention(in_dim, out_dim, head_dim=32, causal=causal)
    with torch.no_grad():
        attn.q_bias.normal_(), attn.v_bias.normal_()
    x = torch.randn(2, 7, in_dim)
    torch.testing.assert_close(attn(x), manual_attention(attn, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_causality(causal):
    """Post-quant projections are causal in raster order: changing token j leaves outputs before j unchanged."""
    torch.manual_seed(0)
    proj = AttnProjection(32, 128, head_dim=32, causal=causal).eval()
    x = torch.randn(1, 10, 32)
    x2 = x.clone()
    x2[:, 6] = torch.randn(32)  # (a constant shift would vanish in the LayerNorms)
    y, y2 = proj(x), proj(x2)
    changed_before = (y[:, :6] - y2[:, :6]).abs().max().item()
    if causal:
        assert changed_before == 0.0
    else:
        assert changed_before > 1e-4
    assert (y[:, 6] - y2[:, 6]).abs().max() > 1e-4


def test_key_has_no_bias():
    attn = ProjectionAttention(128, 32, head_dim=32)
    with torch.no_grad():
        attn.q_bias.fill_(1.0), attn.v_bias.fill_(2.0)
    bias = attn.qkv_bias()
    assert attn.qkv.bias is None
    assert bias[:128].eq(1).all() and bias[128:256].eq(0).all() and bias[256:].eq(2).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="head_dim"):
        AttnProjection(100, 32, head_dim=32)
    proj = AttnProjection(128, 32)
    with pytest.raises(ValueError, match=r"\(B, N, 128\)"):
        proj(torch.randn(2, 9, 64))
    with pytest.raises(ValueError, match=r"\(B, N, 128\)"):
        proj(torch.randn(9, 128))
