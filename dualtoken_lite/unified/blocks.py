"""The transformer block the unified model is made of: pre-norm causal self-attention and an MLP (GPT-2 layout).

    x = x + Attn(LN(x))              # (B, T, C); causal: token t attends to tokens <= t
    x = x + MLP(LN(x))               # C -> 4C -> C, GELU

``Transformer`` stacks L blocks and a final LayerNorm; ``step`` decodes with a key/value cache (sampling: each
new token costs one token's work instead of a pass over the whole prefix). Either may take ``turns``: the factors
of a 2-D rotary embedding (unified/rotary.py) for the queries and the keys, applied in every block; keys enter
the cache already turned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualtoken_lite.unified.rotary import rotate

Turns = tuple[Tensor, Tensor] | None  # rotary (cos, sin), (2, 1, 1, T, c) each: [0] queries, [1] keys; None: none


class Block(nn.Module):
    """One pre-norm causal transformer block (module docstring)."""

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

    def qkv_heads(self, x: Tensor, turns: Turns = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> queries, keys, values (B, h, T, c), c = C / h; queries and keys turned by ``turns``."""
        B, T, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if turns is None:
            return qkv[0], qkv[1], qkv[2]
        q, k = rotate(qkv[:2], *turns)  # (2, B, h, T, c): both turned in one pass
        return q, k, qkv[2]

    def merge(self, x: Tensor, a: Tensor) -> Tensor:
        """Residual adds: x (B, T, C) + proj(attention output (B, h, T, c)), then the MLP."""
        x = x + self.proj(a.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: Tensor, turns: Turns = None) -> Tensor:
        q, k, v = self.qkv_heads(x, turns)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, c)
        return self.merge(x, a)

    def step(self, x: Tensor, cache: dict, turns: Turns = None) -> Tensor:
        """New tokens x (B, T, C) attending to the keys/values cached from earlier steps and causally to each other:
        ONE token after a filled cache, or any number into an empty one (a prefix)."""
        T = x.shape[1]
        if cache and T > 1:
            raise ValueError(f"step takes one token after a filled cache, got {T}")
        q, k, v = self.qkv_heads(x, turns)
        if cache:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)  # (B, h, t + 1, c)
        cache["k"], cache["v"] = k, v
        return self.merge(x, F.scaled_dot_product_attention(q, k, v, is_causal=T > 1))  # all cached is the past


class Transformer(nn.Module):
    """L causal blocks and a final LayerNorm: (B, T, C) -> (B, T, C)."""

    def __init__(self, width: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, turns: Turns = None) -> Tensor:
        for block in self.blocks:
            x = block(x, turns)
        return self.norm(x)

    def step(self, x: Tensor, caches: list[dict], turns: Turns = None) -> Tensor:
        """New tokens (B, T, C) -> their outputs (B, T, C), with a key/value cache per block (``new_cache``): a whole
        prefix into empty caches, then one token at a time. Equal to the last T positions of ``forward`` over all
        tokens so far, at the cost of T tokens."""
        for block, cache in zip(self.blocks, caches):
            x = block.step(x, cache, turns)
        return self.norm(x)

    def new_cache(self) -> list[dict]:
        """Empty key/value caches, one per block, for ``step``."""
        return [{} for _ in self.blocks]
