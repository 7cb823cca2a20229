"""DualToken: one SigLIP tower, a shallow pixel codebook and a deep semantic codebook (docs/method.md §1-2).

    images (B, 3, h, w)
      -> embed -> blocks 1..L_short  ---------------------------- shortcut_proj -> (B, N, d) x shortcut_weight --+
      -> blocks ..L_pix ---------------------------------------- pixel_proj    -> (B, N, d) --------------------(+)
                                                                     pixel_quantizer -> codes (B, H, W, D)
                                                                     pixel_post_proj -> (B, N, C) -> (B, C, H, W)
                                                                     resize -> post_quant_block -> decoder
                                                                     -> reconstruction (B, 3, h, w)
      -> blocks ..L_sem -> semantic_proj -> semantic_quantizer -> codes (B, H, W, D)
                           semantic_post_proj -> (B, N, C): REPLACES the hidden state after block L_sem
      -> blocks L_sem+1..L -> final norm -> MAP head -> pooled (B, E)

The hidden state after L_pix goes on unquantized to the deeper blocks; only the semantic re-entry puts quantized
information back into the tower, so the pooled embedding is a function of the semantic codes alone.

Ablations (ModelConfig): ``semantic_layer=None`` switches the semantic branch off (no pooled output);
``shared_quantizer=True`` taps one layer and quantizes it once: the semantic re-entry reads the pixel codes
(``semantic_quantizer is pixel_quantizer``, ``semantic_proj is None``, ``out.semantic is out.pixel``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dualtoken_lite.model.backbone import VisionTower
from dualtoken_lite.model.config import ModelConfig, validate
from dualtoken_lite.model.decoder import ConvDecoder, PostQuantResBlock, resize_to_latent_grid
from dualtoken_lite.model.pretrained import load_pretrained, save_pretrained
from dualtoken_lite.model.projection import AttnProjection, ConvProjection
from dualtoken_lite.quantizers.residual import ResidualQuantizer, RVQOutput


@dataclass
class DualTokenOutput:
    """What ``DualToken.forward`` returns."""

    reconstruction: Tensor  # (B, 3, h, w) decoded pixel codes, [-1, 1] scale (not clamped)
    pixel: RVQOutput  # the pixel quantizer's output (quantized (B, H, W, d), commitment, stats)
    pixel_codes: Tensor  # (B, H, W, D) long
    semantic: RVQOutput | None  # the semantic quantizer's output; None when the branch is off
    semantic_codes: Tensor | None  # (B, H, W, D) long; None when the branch is off
    semantic_features: Tensor | None  # (B, N, C) post-quant semantic hidden state that replaced block L_sem's
    pooled: Tensor | None  # (B, E) MAP-head output computed through the quantized semantic path


class DualToken(nn.Module):
    """The DualToken tokenizer (docs/method.md §2). Build from a ``ModelConfig`` (e.g. ``model_preset("tiny")``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = validate(cfg)
        C, d_pix = cfg.backbone.width, cfg.pixel_quantizer.code_dim
        pix_head = cfg.proj_head_dim
        sem_head = cfg.semantic_proj_head_dim or cfg.proj_head_dim
        self.encoder = VisionTower(cfg.backbone)
        # pixel branch: pre-quant projections (C -> d), quantizer, post-quant projection (d -> C, causal)
        self.pixel_proj = self.projection(C, d_pix, pix_head)
        self.shortcut_proj = self.projection(C, d_pix, pix_head) if cfg.shortcut_layer is not None else None
        self.pixel_quantizer = ResidualQuantizer.from_config(cfg.pixel_quantizer)
        self.pixel_post_proj = self.projection(d_pix, C, pix_head, causal=True)
        # semantic branch
        if cfg.semantic_layer is None:
            self.semantic_proj = self.semantic_quantizer = self.semantic_post_proj = None
        elif cfg.shared_quantizer:
            self.semantic_proj = None
            # an alias, not a second registration: the state dict holds the shared quantizer once
            object.__setattr__(self, "semantic_quantizer", self.pixel_quantizer)
            self.semantic_post_proj = self.projection(d_pix, C, pix_head, causal=True)
        else:
            d_sem = cfg.semantic_quantizer.code_dim
            self.semantic_proj = self.projection(C, d_sem, sem_head)
            self.semantic_quantizer = ResidualQuantizer.from_config(cfg.semantic_quantizer)
            self.semantic_post_proj = self.projection(d_sem, C, sem_head, causal=True)
        # decoder path: (B, C, H, W) -> resize -> (B, C_in, g, g) -> (B, 3, h, w)
        self.post_quant_block = PostQuantResBlock(C, cfg.decoder_in_channels, cfg.decoder_norm_groups)
        self.decoder = ConvDecoder(
            cfg.decoder_in_channels, cfg.decoder_channels, cfg.decoder_channel_mult, cfg.decoder_res_blocks,
            cfg.decoder_norm_groups,
        )

    def projection(self, in_dim: int, out_dim: int, head_dim: int, causal: bool = False) -> nn.Module:
        """A pre- or post-quant projection of the configured kind: AttnProjection, or the early release's ResNet
        block (``projection="conv"``, which has no causal order)."""
        if self.cfg.projection == "conv":
            return ConvProjection(in_dim, out_dim, self.cfg.backbone.grid, self.cfg.decoder_norm_groups)
        return AttnProjection(in_dim, out_dim, head_dim, causal=causal)

    # ----------------------------------------------------------------------------------------- stages
    @property
    def grid(self) -> int:
        """Tokens per side of the grid, H = W."""
        return self.cfg.backbone.grid

    def to_grid(self, z: Tensor) -> Tensor:
        """(B, N, d) -> (B, H, W, d)."""
        return z.reshape(z.shape[0], self.grid, self.grid, z.shape[-1])

    def forward_encoder(self, images: Tensor, pool: bool = True) -> dict:
        """Tower with both taps: pixel/semantic RVQOutputs, the semantic re-entry state, the pooled embedding."""
        cfg, tower = self.cfg, self.encoder
        x = tower.embed(images)  # (B, N, C)
        out = {"pixel": None, "semantic": None, "semantic_features": None, "pooled": None}
        shortcut, done = None, 0
        for layer in sorted({cfg.shortcut_layer, cfg.pixel_layer, cfg.semantic_layer} - {None}):
            x = tower.run_blocks(x, done + 1, layer)  # (B, N, C), hidden state after block `layer`
            done = layer
            if layer == cfg.shortcut_layer:
                shortcut = self.shortcut_proj(x)  # (B, N, d)
            if layer == cfg.pixel_layer:
                z = self.pixel_proj(x)  # (B, N, d)
                if shortcut is not None:
                    z = z + cfg.shortcut_weight * shortcut  # docs/method.md §2: + 0.6 x projection of block 4
                out["pixel"] = self.pixel_quantizer(self.to_grid(z))  # quantized (B, H, W, d), codes (B, H, W, D)
                if cfg.pixel_bypass:  # ceiling ablation: the decoder sees z itself, the commitment is off
                    out["pixel"] = dataclasses.replace(
                        out["pixel"], quantized=self.to_grid(z), commitment=out["pixel"].commitment * 0.0)
            if layer == cfg.semantic_layer:
                if cfg.shared_quantizer:
                    sem = out["pixel"]
                else:
                    sem = self.semantic_quantizer(self.to_grid(self.semantic_proj(x)))
                x = self.semantic_post_proj(sem.quantized.flatten(1, 2))  # (B, N, C) replaces the hidden state
                out["semantic"], out["semantic_features"] = sem, x
        if pool and cfg.semantic_layer is not None:
            out["pooled"] = tower.pool(tower.run_blocks(x, done + 1, tower.depth))  # (B, E)
        return out

    def decode_quantized(self, quantized: Tensor) -> Tensor:
        """Quantized pixel vectors (B, H, W, d) -> images (B, 3, h, w)."""
        B, H, W, d = quantized.shape
        h = self.pixel_post_proj(quantized.reshape(B, H * W, d))  # (B, N, C)
        h = h.transpose(1, 2).reshape(B, -1, H, W)  # (B, C, H, W) as a channels_last view: the decoder runs so
        h = resize_to_latent_grid(h, self.cfg.decoder_latent_grid)  # (B, C, g, g)
        return self.decoder(self.post_quant_block(h))  # (B, C_in, g, g) -> (B, 3, h, w)

    def forward(self, images: Tensor) -> DualTokenOutput:
        """images (B, 3, h, w) in [-1, 1] -> reconstruction, codes, semantic features and pooled embedding."""
        enc = self.forward_encoder(images)
        pixel, semantic = enc["pixel"], enc["semantic"]
        return DualTokenOutput(
            reconstruction=self.decode_quantized(pixel.quantized),
            pixel=pixel,
            pixel_codes=pixel.codes,
            semantic=semantic,
            semantic_codes=semantic.codes if semantic is not None else None,
            semantic_features=enc["semantic_features"],
            pooled=enc["pooled"],
        )

    # ----------------------------------------------------------------------------------------- codes API
    def check_codes(self, codes: Tensor, quantizer: ResidualQuantizer, name: str, depths: int | None = None) -> None:
        """Raise ValueError unless codes is (B, H, W, D) for this model's grid and quantizer depth (or, with
        ``depths``, just the first ``depths`` of them: (B, H, W, depths))."""
        want = (self.grid, self.grid, quantizer.depth)
        allowed = {quantizer.depth, depths or quantizer.depth}
        if not torch.is_tensor(codes) or codes.dim() != 4 or tuple(codes.shape[1:3]) != want[:2] or \
                codes.shape[3] not in allowed:
            got = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
            raise ValueError(f"{name} must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {got}")
        quantizer.check_codes(codes, allowed_depths=tuple(allowed))  # integer dtype, values in [0, K)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """images (B, 3, h, w) -> (pixel_codes (B, H, W, D), semantic_codes (B, H, W, D) or None).

        Use eval mode for inference: in training mode the quantizers also accumulate EMA statistics.
        """
        enc = self.forward_encoder(images, pool=False)
        return enc["pixel"].codes, enc["semantic"].codes if enc["semantic"] is not None else None

    def decode(self, pixel_codes: Tensor, depths: int | None = None) -> Tensor:
        """pixel_codes (B, H, W, D) -> images (B, 3, h, w), [-1, 1] scale. ``depths=d`` decodes from the first d
        depths only (a coarser image; the codes may then be just those, (B, H, W, d))."""
        self.check_codes(pixel_codes, self.pixel_quantizer, "pixel_codes", depths)
        return self.decode_quantized(self.pixel_quantizer.decode(pixel_codes, depths))

    def embed(self, images: Tensor) -> Tensor:
        """images (B, 3, h, w) -> pooled embedding (B, E) through the quantized semantic path."""
        self.require_semantic("embed")
        return self.forward_encoder(images)["pooled"]

    def decode_semantic(self, semantic_codes: Tensor) -> Tensor:
        """semantic_codes (B, H, W, D) -> pooled embedding (B, E): the codes alone determine it."""
        self.require_semantic("decode_semantic")
        self.check_codes(semantic_codes, self.semantic_quantizer, "semantic_codes")
        q = self.semantic_quantizer.decode(semantic_codes)  # (B, H, W, d)
        x = self.semantic_post_proj(q.flatten(1, 2))  # (B, N, C)
        return self.encoder.pool(self.encoder.run_blocks(x, self.cfg.semantic_layer + 1, self.encoder.depth))

    def require_semantic(self, what: str) -> None:
        """Raise a clear error when the semantic branch is switched off."""
        if self.cfg.semantic_layer is None:
            raise RuntimeError(f"{what}() needs the semantic branch, but this model has semantic_layer=None")

    # ----------------------------------------------------------------------------------------- training
    def update_codebooks(self) -> dict[str, float]:
        """Once per optimizer step: EMA update of each quantizer (once, even when shared); merged logs."""
        logs = {f"pixel/{k}": v for k, v in self.pixel_quantizer.update_codebook().items()}
        if self.semantic_quantizer is not None and self.semantic_quantizer is not self.pixel_quantizer:
            logs.update({f"semantic/{k}": v for k, v in self.semantic_quantizer.update_codebook().items()})
        return logs

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (see model/pretrained.py)."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> DualToken:
        """Rebuild a model saved by ``save_pretrained``; any key/shape mismatch is an error."""
        return load_pretrained(cls, directory, device=device)
