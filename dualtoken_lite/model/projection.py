"""The pre- and post-quant projections between the backbone width C and the code dim d (docs/method.md §2).

Before a codebook, each tapped hidden state (B, N, C) is squeezed to code vectors (B, N, d); after the codebook,
the quantized vectors (B, N, d) are widened back to (B, N, C). DualToken does both with one block shape:

    y = Linear(LN_lin x) + Attn(LN_attn x)          # a linear path and an attention path, each with its own norm
    y = y + GeGLU(LN_mlp y)                        # a gated MLP residual, hidden = 2 x out dim

The attention always runs at the wide size, in heads of ``head_dim`` (32 in the paper):
    squeeze (C -> d):  qkv Linear C -> 3C, C / head_dim heads, outputs AVERAGED over heads -> head_dim,
                       then an output Linear head_dim -> d;
    widen   (d -> C):  qkv Linear d -> 3C, C / head_dim heads, outputs CONCATENATED -> C, output Linear C -> C,
                       and causal over the raster order of the grid (post-quant, docs/method.md §2).
The release sizes the heads from the code dim (C // d heads of d), so each branch may have its own head size.
The qkv Linear has no bias of its own; learned q and v biases stand in for it and k gets none (a k bias adds the
same constant to every logit of a query, which the softmax ignores).

Parameter count. Two LayerNorms are easy to miss when counting from a description of the released model:
    * the MLP input is normalised twice: the outer ``LN_mlp`` above, then the GeGLU's own LayerNorm
      (+2 d for squeeze, +2 C for widen); functionally redundant, kept so the counts and weights match;
    * the widen block's two input norms act on d-dim vectors (+2 x 2 d = 128 at d = 32).
With both, at C = 1152, d = 32, head_dim = 32 the counts are exactly 4,032,608 (squeeze) and 9,452,288
(widen), the released model's figures (tested in tests/test_paper_scale.py).

``ConvProjection`` is the other shape, the one of the release's earliest published tokenizer (docs/method.md §2,
"the dim-256 model"): a ResNet block on the (C, H, W) grid, GroupNorm + SiLU + 1x1 conv, GroupNorm + SiLU + 3x3
conv, plus a 1x1 conv skip. Its 3x3 conv mixes neighbouring positions in both directions: it is not causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dualtoken_lite.model.decoder import PostQuantResBlock
from dualtoken_lite.model.onednn_linear import linear_of


class GeGLU(nn.Module):
    """Gated MLP with its own input LayerNorm: ``W2 (gelu_tanh(W0 LN y) * W1 LN y)``, hidden = ratio x dim."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.w0 = nn.Linear(dim, hidden)  # gate
        self.w1 = nn.Linear(dim, hidden)  # value
        self.w2 = nn.Linear(hidden, dim)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.norm(y)
        return self.w2(self.act(self.w0(y)) * self.w1(y))


class ProjectionAttention(nn.Module):
    """Multi-head self-attention that changes width: heads averaged when squeezing, concatenated when widening."""

    def __init__(self, in_dim: int, out_dim: int, head_dim: int, causal: bool = False):
        super().__init__()
        wide = max(in_dim, out_dim)  # attention always runs at the wide size
        if wide % head_dim:
            raise ValueError(f"attention width {wide} is not a multiple of head_dim={head_dim}; pick a divisor")
        self.squeeze = in_dim > out_dim
        self.heads, self.head_dim, self.causal = wide // head_dim, head_dim, causal
        self.qkv = nn.Linear(in_dim, 3 * wide, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(wide))
        self.v_bias = nn.Parameter(torch.zeros(wide))
        self.proj = nn.Linear(head_dim if self.squeeze else wide, out_dim)

    def qkv_bias(self) -> torch.Tensor:
        """The (3 * wide) bias of the qkv Linear: learned for q and v, zero for k (softmax ignores a k bias)."""
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = linear_of(self.qkv)(x, self.qkv.weight, self.qkv_bias())  # (B, N, 3 * wide)
        q, k, v = qkv.view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, hd)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, heads, N, hd)
        if self.squeeze:
            a = a.mean(dim=1)  # average over heads: (B, N, hd)
        else:
            a = a.transpose(1, 2).reshape(B, N, self.heads * self.head_dim)  # concatenate heads: (B, N, wide)
        return self.proj(a)


class AttnProjection(nn.Module):
    """Pre-quant (C -> d) or post-quant (d -> C, causal) projection of DualToken (docs/method.md §2).

    Args:
        in_dim: width of the input vectors (C before a codebook, d after it).
        out_dim: width of the output vectors.
        head_dim: size of each attention head; the wide side must be a multiple of it (paper: 32).
        causal: attend only to earlier raster positions (the post-quant projections).
        mlp_ratio: GeGLU hidden size as a multiple of ``out_dim`` (paper: 2).
    """

    def __init__(self, in_dim: int, out_dim: int, head_dim: int = 32, causal: bool = False, mlp_ratio: int = 2):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm_lin = nn.LayerNorm(in_dim)  # the linear path's own input norm
        self.lin = nn.Linear(in_dim, out_dim)
        self.norm_attn = nn.LayerNorm(in_dim)  # the attention path's own input norm
        self.attn = ProjectionAttention(in_dim, out_dim, head_dim, causal)
        self.norm_mlp = nn.LayerNorm(out_dim)  # outer norm before the GeGLU (which normalises again)
        self.mlp = GeGLU(out_dim, mlp_ratio * out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, in_dim) -> (B, N, out_dim)."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"AttnProjection expects (B, N, {self.in_dim}), got {tuple(x.shape)}")
        y = self.lin(self.norm_lin(x)) + self.attn(self.norm_attn(x))  # (B, N, out_dim)
        return y + self.mlp(self.norm_mlp(y))


class ConvProjection(nn.Module):
    """Pre- or post-quant projection as a ResNet block on the token grid (the early release's dim-256 model).

    (B, N, in_dim) -> (B, in_dim, H, W) -> GN + SiLU + 1x1 conv, GN + SiLU + 3x3 conv, + 1x1 skip -> (B, N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, grid: int, groups: int = 32):
        super().__init__()
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid
        self.block = PostQuantResBlock(in_dim, out_dim, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, in_dim) with N = grid * grid -> (B, N, out_dim)."""
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.grid**2, self.in_dim):
            raise ValueError(f"ConvProjection expects (B, {self.grid ** 2}, {self.in_dim}), got {tuple(x.shape)}")
        B = x.shape[0]
        h = x.transpose(1, 2).reshape(B, self.in_dim, self.grid, self.grid)  # (B, in_dim, H, W)
        return self.block(h).flatten(2).transpose(1, 2)  # (B, N, out_dim)
