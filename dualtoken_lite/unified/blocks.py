"""The transformer block both unified models are made of: pre-norm self-attention and an MLP (GPT-2 / ViT layout).

    x = x + Attn(LN(x), mask)        # (B, T, C); mask (T, T) bool, True = may attend; or causal
    x = x + MLP(LN(x))               # C -> 4C -> C, GELU

``Transformer`` stacks L blocks and a final LayerNorm; ``step`` decodes one token at a time with a key/value cache
(sampling: each new token costs one token's work instead of a pass over the whole prefix). The reader uses an explicit mask (questions see the image,
the image never sees the questions); the generator's two transformers are causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualtoken_lite.unified.rotary import rotate

Angles = tuple[Tensor, Tensor] | None  # rotary angles of the queries and of the keys, (T, c / 2) each (unified/rotary.py)


class Block(nn.Module):
    """One pre-norm transformer block (module docstring)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))

    def attend(self, x: Tensor, mask: Tensor | None, causal: bool, angles: Angles = None) -> Tensor:
        """Multi-head self-attention: (B, T, C) -> (B, T, C); queries and keys turned by ``angles`` if given."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, T, c)
        if angles is not None:
            q, k = rotate(q, angles[0][:T]), rotate(k, angles[1][:T])
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, c)
        return self.proj(a.transpose(1, 2).reshape(B, T, C))

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False, angles: Angles = None) -> Tensor:
        x = x + self.attend(self.norm1(x), mask, causal, angles)
        return x + self.mlp(self.norm2(x))

    def step(self, x: Tensor, cache: dict, angles: Angles = None) -> Tensor:
        """Causal decoding of ONE new token x (B, 1, C) that attends to the keys/values cached from earlier steps;
        ``angles``: the new token's query and key angles, (1, c / 2) each."""
        B, _, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, 1, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if angles is not None:
            q, k = rotate(q, angles[0]), rotate(k, angles[1])  # the cache holds turned keys
        if cache:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)  # (B, h, t + 1, c)
        cache["k"], cache["v"] = k, v
        a = F.scaled_dot_product_attention(q, k, v)  # the new token is last: everything cached is its past
        x = x + self.proj(a.transpose(1, 2).reshape(B, 1, C))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """L blocks and a final LayerNorm: (B, T, C) -> (B, T, C)."""

    def __init__(self, width: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False, angles: Angles = None) -> Tensor:
        for block in self.blocks:
            x = block(x, mask, causal, angles)
        return self.norm(x)

    def step(self, x: Tensor, caches: list[dict], angles: Angles = None) -> Tensor:
        """One new token (B, 1, C) -> its output (B, 1, C), with a key/value cache per block (``new_cache``).

        Equal to the last position of ``forward(all tokens so far, causal=True, angles)``, at the cost of one token
        (``angles`` here: that token's rows of the full tables).
        """
        for block, cache in zip(self.blocks, caches):
            x = block.step(x, cache, angles)
        return self.norm(x)

    def new_cache(self) -> list[dict]:
        """Empty key/value caches, one per block, for ``step``."""
        return [{} for _ in self.blocks]
