"""Reading a grid position's stack of codes as ONE vector: the sum of its code embeddings (the DualToken paper, section 3.3).

The paper's unified model does not make the sequence longer to hold two token types: at each grid position it
embeds that position's pixel codes and semantic codes and adds them up, so the language model sees H x W image
positions whatever the number of codes per position. Here a position's stack is its S ids in the LM token layout
(model/token_layout.py: pixel depths 1..D_pix, then semantic depths 1..D_sem), and a *variant* picks the slots a
model reads:

    variant     slots (0-based, D_pix = 8, D_sem = 4)
    pixel       0..7           the pixel codes only
    semantic    8..11          the semantic codes only
    both        0..11          pixel + semantic: what DualToken feeds its language model

    e[n, s] = P_branch(s) E_s[c[n, s]]              each slot s has its own table E_s (K x code_dim) of its branch
    x[n]    = sum_s e[n, s]                          (B, N, S) ids -> (B, N, width)

Initialised from the tokenizer (``init_from_tokenizer``), every slot's table holds its branch's codebook vectors,
so the sum over a branch's slots starts as exactly the quantized vector the tokenizer's residual quantizer
rebuilds from those codes (docs/method.md §2), seen through one linear map P per branch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dualtoken_lite.model.token_layout import TokenLayout, depth_offsets

VARIANTS = ("pixel", "semantic", "both")


def variant_slots(layout: TokenLayout, variant: str) -> list[int]:
    """The stack slots a variant reads (see the module docstring); an unknown variant is an error listing them."""
    Dp, Ds = layout.pixel_depth, layout.semantic_depth
    slots = {"pixel": list(range(Dp)), "semantic": list(range(Dp, Dp + Ds)), "both": list(range(Dp + Ds))}
    if variant not in slots:
        raise ValueError(f"variant={variant!r}: choose one of {VARIANTS}")
    return slots[variant]


def slot_offsets(layout: TokenLayout) -> Tensor:
    """(S,) the id of code 0 at each stack slot: branch offset + depth offset (model/token_layout.py)."""
    pixel = depth_offsets(layout.pixel_codebook_size, layout.pixel_depth, layout.pixel_shared)
    semantic = layout.semantic_offset + depth_offsets(layout.semantic_codebook_size, layout.semantic_depth,
                                                      layout.semantic_shared)
    return torch.cat([pixel, semantic])


def slot_sizes(layout: TokenLayout) -> list[int]:
    """(S,) codebook size K of each stack slot."""
    return [layout.pixel_codebook_size] * layout.pixel_depth + [layout.semantic_codebook_size] * layout.semantic_depth


class CodeStackEmbedding(nn.Module):
    """Stacks of layout ids (B, N, S_all) -> per-slot embeddings (B, N, S, width) -> their sum (B, N, width)."""

    def __init__(self, layout: TokenLayout, variant: str | list[int], width: int, code_dim: int):
        super().__init__()
        self.slots = variant_slots(layout, variant) if isinstance(variant, str) else list(variant)  # pixel first
        sizes = slot_sizes(layout)
        self.num_pixel = sum(1 for s in self.slots if s < layout.pixel_depth)  # pixel slots come first
        bases = torch.tensor([0] + [sizes[s] for s in self.slots[:-1]]).cumsum(0)  # row of code 0 of each slot
        self.register_buffer("index", torch.tensor(self.slots), persistent=False)  # (S,) slots read
        self.register_buffer("offset", slot_offsets(layout)[self.slots], persistent=False)  # (S,) id of code 0
        self.register_buffer("base", bases, persistent=False)  # (S,) first table row of each slot
        self.table = nn.Embedding(sum(sizes[s] for s in self.slots), code_dim)  # E_s, all slots stacked
        self.pixel_proj = nn.Linear(code_dim, width, bias=False) if self.num_pixel else None  # P_pixel
        has_semantic = self.num_pixel < len(self.slots)
        self.semantic_proj = nn.Linear(code_dim, width, bias=False) if has_semantic else None  # P_semantic
        nn.init.normal_(self.table.weight, std=0.02)

    def local_codes(self, stacks: Tensor) -> Tensor:
        """Layout ids (B, N, S_all) -> each read slot's code within its codebook (B, N, S)."""
        return stacks.index_select(-1, self.index) - self.offset

    def per_slot(self, codes: Tensor) -> Tensor:
        """Codes (B, N, s) of the first s read slots -> embeddings (B, N, s, width), each projected by its branch's P."""
        s = codes.shape[-1]
        e = self.table(codes + self.base[:s])  # (B, N, s, code_dim)
        p = min(self.num_pixel, s)  # how many of them are pixel slots (they come first)
        parts = [self.pixel_proj(e[..., :p, :])] if p else []  # (B, N, p, width)
        if s > p:
            parts.append(self.semantic_proj(e[..., p:, :]))  # (B, N, s - p, width)
        return torch.cat(parts, dim=-2)

    def forward(self, stacks: Tensor, keep: Tensor | None = None) -> Tensor:
        """Layout ids (B, N, S_all) -> one vector per position (B, N, width): the sum over the read slots (over the
        slots where ``keep`` (S,) bool is true, when given)."""
        e = self.per_slot(self.local_codes(stacks))  # (B, N, S, width)
        return (e if keep is None else e[..., keep, :]).sum(-2)

    @torch.no_grad()
    def init_from_tokenizer(self, tokenizer) -> None:
        """Fill every slot's table with its branch's codebook vectors (code_dim must be the tokenizer's)."""
        Dp = tokenizer.cfg.pixel_quantizer.depth
        for k, slot in enumerate(self.slots):
            quantizer = tokenizer.pixel_quantizer if slot < Dp else tokenizer.semantic_quantizer
            vectors = quantizer.codebook_at(slot if slot < Dp else slot - Dp).embed  # (K, d)
            if vectors.shape[1] != self.table.embedding_dim:
                raise ValueError(f"code_dim={self.table.embedding_dim} differs from the tokenizer's code dimension "
                                 f"{vectors.shape[1]}: set code_dim to it, or init_from_codebooks=false")
            start = int(self.base[k])
            self.table.weight[start : start + vectors.shape[0]] = vectors.float()
