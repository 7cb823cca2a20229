"""THE token layout a multimodal language model consumes: DualToken's two code maps as one id sequence.

    layout = TokenLayout.from_config(model.cfg, specials=True)
    tokens = to_lm_sequence(pixel_codes, semantic_codes, layout)     # (B, H, W, D) x 2 -> (B, L)
    pixel_codes, semantic_codes = from_lm_sequence(tokens, layout)   # and back, exactly

An image gives two code maps (docs/method.md §2): pixel codes (B, H, W, D_pix) and semantic codes (B, H, W, D_sem),
27 x 27 x 8 each at paper scale. A language model reads them as ONE sequence per image:

    [<boi>]  p(0,0,1) .. p(0,0,D_pix)  s(0,0,1) .. s(0,0,D_sem)   p(0,1,1) ..   ...   s(H-1,W-1,D_sem)  [<eoi>]
              '------- position (row 0, col 0) -------------'   '-- (0, 1) ..

    * raster order: positions row-major over the H x W grid (row r, column c -> n = r * W + c);
    * per position, the pixel codes of depths 1..D_pix, then the semantic codes of depths 1..D_sem
      (depth fastest: coarse to fine, as a depth transformer would emit them);
    * L = N * (D_pix + D_sem) tokens (+ 2 with the <boi>/<eoi> specials): 11,664 (+2) for so400m-384.

Vocabulary (``TokenLayout``): ids never collide across codebooks.

    pixel     [0, V_pix)                       V_pix = K_pix        (one codebook shared by all depths, docs/method.md §2)
    semantic  [V_pix, V_pix + V_sem)           V_sem = K_sem
    <boi>, <eoi>   V_pix + V_sem, V_pix + V_sem + 1   (with ``specials``)

    token = offset(branch) + code                  shared codebook: a code means the same vector at every depth
    token = offset(branch) + (d - 1) * K + code    per-depth codebooks (shared_codebook=False): V = D * K

With so400m-384: pixel ids 0..16383, semantic ids 16384..32767, <boi> 32768, <eoi> 32769. A model with no
semantic branch, or the shared-quantizer ablation (whose semantic codes ARE its pixel codes), has D_sem = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenLayout:
    """Where each code of an image goes in the language model's sequence and vocabulary (module docstring)."""

    grid: int  # H = W, tokens per side
    pixel_depth: int  # D_pix, pixel codes per position
    pixel_codebook_size: int  # K_pix
    pixel_shared: bool  # one pixel codebook for all depths (ids shared) or one per depth
    semantic_depth: int = 0  # D_sem, semantic codes per position (0: no separate semantic codes)
    semantic_codebook_size: int = 0  # K_sem
    semantic_shared: bool = True  # one semantic codebook for all depths
    specials: bool = False  # wrap each image in <boi> ... <eoi>

    @classmethod
    def from_config(cls, cfg, specials: bool = False) -> TokenLayout:
        """The layout of a ModelConfig (D_sem = 0 without a separate semantic quantizer)."""
        p, s = cfg.pixel_quantizer, cfg.semantic_quantizer
        has_semantic = cfg.semantic_layer is not None and not cfg.shared_quantizer
        return cls(cfg.backbone.grid, p.depth, p.codebook_size, p.shared_codebook,
                   s.depth if has_semantic else 0, s.codebook_size if has_semantic else 0,
                   s.shared_codebook, specials)

    @property
    def pixel_vocab(self) -> int:
        return self.pixel_codebook_size * (1 if self.pixel_shared else self.pixel_depth)

    @property
    def semantic_offset(self) -> int:
        return self.pixel_vocab

    @property
    def semantic_vocab(self) -> int:
        return self.semantic_codebook_size * (1 if self.semantic_shared else self.semantic_depth)

    @property
    def boi(self) -> int:
        return self.pixel_vocab + self.semantic_vocab

    @property
    def eoi(self) -> int:
        return self.boi + 1

    @property
    def vocab_size(self) -> int:
        return self.boi + (2 if self.specials else 0)

    @property
    def length(self) -> int:
        """L, tokens per image."""
        return self.grid**2 * (self.pixel_depth + self.semantic_depth) + (2 if self.specials else 0)


def depth_offsets(codebook_size: int, depth: int, shared: bool, device=None) -> Tensor:
    """(D,) id offset of each depth inside a branch: zeros for a shared codebook, d * K for per-depth ones."""
    steps = torch.zeros(depth, dtype=torch.long, device=device) if shared else torch.arange(depth, device=device)
    return steps * codebook_size


def _check_map(codes: Tensor, layout: TokenLayout, depth: int, size: int, name: str) -> None:
    want = (layout.grid, layout.grid, depth)
    if not torch.is_tensor(codes) or codes.dim() != 4 or tuple(codes.shape[1:]) != want:
        got = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
        raise ValueError(f"{name} must have shape (B, {want[0]}, {want[1]}, {want[2]}); got {got}")
    if codes.is_floating_point() or (codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size)):
        raise ValueError(f"{name} must be integer codes in [0, {size}); got {codes.dtype} "
                         f"in [{int(codes.min())}, {int(codes.max())}]" if codes.numel() else f"{name} is empty")


def to_lm_sequence(pixel_codes: Tensor, semantic_codes: Tensor | None, layout: TokenLayout) -> Tensor:
    """Code maps (B, H, W, D_pix) and (B, H, W, D_sem) -> token ids (B, L) in the documented layout."""
    _check_map(pixel_codes, layout, layout.pixel_depth, layout.pixel_codebook_size, "pixel_codes")
    dev = pixel_codes.device
    parts = [pixel_codes.long() + depth_offsets(layout.pixel_codebook_size, layout.pixel_depth,
                                                 layout.pixel_shared, dev)]  # (B, H, W, D_pix)
    if layout.semantic_depth:
        if semantic_codes is None:
            raise ValueError("this layout has semantic codes (semantic_depth > 0) but semantic_codes is None")
        _check_map(semantic_codes, layout, layout.semantic_depth, layout.semantic_codebook_size, "semantic_codes")
        parts.append(semantic_codes.long() + layout.semantic_offset + depth_offsets(
            layout.semantic_codebook_size, layout.semantic_depth, layout.semantic_shared, dev))
    tokens = torch.cat(parts, dim=-1).flatten(1)  # (B, H, W, D_pix + D_sem) -> (B, L): raster, then depth
    if layout.specials:
        B = tokens.shape[0]
        tokens = torch.cat([tokens.new_full((B, 1), layout.boi), tokens, tokens.new_full((B, 1), layout.eoi)], 1)
    return tokens


def from_lm_sequence(tokens: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor | None]:
    """Token ids (B, L) -> (pixel_codes (B, H, W, D_pix), semantic_codes (B, H, W, D_sem) or None)."""
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.shape[1] != layout.length:
        got = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(f"tokens must have shape (B, {layout.length}) for this layout; got {got}")
    tokens = tokens.long()
    if layout.specials:
        if not (bool((tokens[:, 0] == layout.boi).all()) and bool((tokens[:, -1] == layout.eoi).all())):
            raise ValueError(f"each sequence must start with <boi>={layout.boi} and end with <eoi>={layout.eoi}")
        tokens = tokens[:, 1:-1]
    Dp, Ds, g = layout.pixel_depth, layout.semantic_depth, layout.grid
    grid = tokens.reshape(tokens.shape[0], g, g, Dp + Ds)  # (B, H, W, D_pix + D_sem)
    pixel = grid[..., :Dp] - depth_offsets(layout.pixel_codebook_size, Dp, layout.pixel_shared, tokens.device)
    _check_ids(pixel, layout.pixel_codebook_size, "pixel")
    if not Ds:
        return pixel, None
    semantic = grid[..., Dp:] - layout.semantic_offset - depth_offsets(
        layout.semantic_codebook_size, Ds, layout.semantic_shared, tokens.device)
    _check_ids(semantic, layout.semantic_codebook_size, "semantic")
    return pixel, semantic


def _check_ids(codes: Tensor, size: int, branch: str) -> None:
    """Raise naming the first position whose token is outside its branch/depth id range."""
    bad = (codes < 0) | (codes >= size)
    if bool(bad.any()):
        b, r, c, d = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"token at image {b}, row {r}, column {c}, {branch} depth {d + 1} is outside the "
                         f"{branch} id range of that depth: is the sequence from a model with this layout?")
