"""Configuration: plain dataclasses with named presets (STYLE habit 5).

Every knob of the model lives here, with a comment saying what it means and where it comes from
(SPEC = the DualToken paper and its released code, summarised in the project's SPEC notes). A config is
validated by ``validate()`` before any weights are built or any data is read.

Presets:
    tiny        64 px, patch 8 -> 8x8 grid, a few million parameters; runs on a laptop CPU.
    so400m-384  the paper's model: SigLIP So400m/14 at 384 px, 27x27 grid, RVQ depth 8, K = 16,384.
    so400m-256  the 256 px variant: SigLIP2 So400m/16 at 256 px, 16x16 grid, RVQ depth 4.

Notation used for shapes everywhere in the project:
    B batch, H x W token grid, N = H * W tokens, C backbone width, d code dim, D residual depth,
    K codebook size, (h, w) image height and width in pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

QUICK_ENV = "DUALTOKEN_LITE_QUICK"


def quick_mode() -> bool:
    """The one switch that shrinks notebook workloads under test (``DUALTOKEN_LITE_QUICK=1``)."""
    return os.environ.get(QUICK_ENV, "0") not in ("", "0", "false", "False")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


@dataclass
class BackboneConfig:
    """The SigLIP-style vision tower (a timm ``VisionTransformer`` trunk: no class token, MAP pooling head)."""

    arch: str = "tiny"  # "tiny" (built from the fields below) or an open_clip model name, e.g. "ViT-SO400M-14-SigLIP-384"
    pretrained: str | None = None  # None = random init; an open_clip tag ("webli"); or a local weights file/folder
    image_size: int = 64  # input resolution in pixels (square)
    patch_size: int = 8  # ViT patch size; the token grid is image_size // patch_size on each side
    width: int = 128  # C, the transformer width
    layers: int = 6  # number of transformer blocks
    heads: int = 4  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio * width
    grad_checkpointing: bool = False  # recompute encoder blocks in backward (saves memory at paper scale)

    @property
    def grid(self) -> int:
        """Tokens per side of the grid: 27 for so400m-384, 8 for tiny."""
        return self.image_size // self.patch_size


@dataclass
class QuantizerConfig:
    """One residual vector quantizer (SPEC §2: depth 8, one shared codebook of 16,384 codes)."""

    code_dim: int = 32  # d, the dimension of each code (32 in the released config; 256 in the model zoo)
    depth: int = 8  # D, residual depth: codes per token position
    codebook_size: int = 16384  # K, codes in the codebook
    shared_codebook: bool = True  # one codebook for all depths (SPEC) or one per depth
    decay: float = 0.99  # EMA decay of the k-means codebook updates
    eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    dead_code_threshold: float = 1.0  # a code whose EMA count falls below this is restarted from data
    cosine: bool = False  # l2-normalise vectors and codes before the lookup (cosine similarity)
    chunk_size: int = 256  # rows of the N x K distance matrix computed at once (256: each block stays in cache)


@dataclass
class ModelConfig:
    """The DualToken tokenizer: one backbone, a pixel branch and a semantic branch (SPEC §2)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_layer: int = 2  # 1-indexed block whose output feeds the pixel codebook (paper: 6)
    shortcut_layer: int | None = 1  # 1-indexed block added to the pixel input with shortcut_weight (paper: 4)
    shortcut_weight: float = 0.6  # weight of the shortcut layer's projection (paper: 0.6)
    semantic_layer: int | None = 5  # 1-indexed block feeding the semantic codebook (paper: 26); None = no branch
    shared_quantizer: bool = False  # ablation: pixel and semantic share one layer and one quantizer
    pixel_quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(depth=8, codebook_size=512))
    semantic_quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig(depth=4, codebook_size=512)
    )
    proj_head_dim: int = 32  # head size inside the pre/post-quant AttnProjections (paper: 32 -> 36 heads)
    decoder_latent_grid: int = 8  # the decoder's input grid after the bilinear resize (paper: 24)
    decoder_channels: int = 32  # base channels of the conv decoder (paper: 128); tiny keeps 64 px levels thin
    decoder_channel_mult: tuple[int, ...] = (4, 2, 1, 1)  # per level, lowest resolution first (paper: 8,4,4,1,1)
    decoder_res_blocks: int = 1  # ResBlocks per level = decoder_res_blocks + 1 (paper: 2 -> 3)
    decoder_in_channels: int = 128  # channels after the post-quant ResNet block (paper: 1024)


def _so400m(image_size: int, patch_size: int, arch: str, depth: int) -> ModelConfig:
    grid = image_size // patch_size
    return ModelConfig(
        backbone=BackboneConfig(
            arch=arch,
            image_size=image_size,
            patch_size=patch_size,
            width=1152,
            layers=27,
            heads=16,
            mlp_ratio=4304 / 1152,
            grad_checkpointing=True,
        ),
        pixel_layer=6,
        shortcut_layer=4,
        shortcut_weight=0.6,
        semantic_layer=26,
        pixel_quantizer=QuantizerConfig(code_dim=32, depth=depth, codebook_size=16384),
        semantic_quantizer=QuantizerConfig(code_dim=32, depth=depth, codebook_size=16384),
        proj_head_dim=32,
        decoder_latent_grid=(grid // 8) * 8 if grid % 8 else grid,  # 27 -> 24 (SPEC: resize 27x27 -> 24x24)
        decoder_channels=128,
        decoder_channel_mult=(8, 4, 4, 1, 1),
        decoder_res_blocks=2,
        decoder_in_channels=1024,
    )


MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "so400m-384": _so400m(384, 14, "ViT-SO400M-14-SigLIP-384", depth=8),
    "so400m-256": _so400m(256, 16, "ViT-SO400M-16-SigLIP2-256", depth=4),
}


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of a named model preset."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return copy.deepcopy(MODEL_PRESETS[name])


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict``'s output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known fields: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(cls, key)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def validate_quantizer(q: QuantizerConfig, where: str) -> None:
    """Check one quantizer config; raise ConfigError naming ``where`` (e.g. 'pixel_quantizer')."""
    if q.code_dim < 1:
        raise ConfigError(f"{where}.code_dim={q.code_dim} must be >= 1")
    if q.depth < 1:
        raise ConfigError(f"{where}.depth={q.depth} must be >= 1")
    if q.codebook_size < 2:
        raise ConfigError(f"{where}.codebook_size={q.codebook_size} must be >= 2")
    if not 0.0 < q.decay < 1.0:
        raise ConfigError(f"{where}.decay={q.decay} must lie strictly between 0 and 1 (paper: 0.99)")
    if q.eps <= 0:
        raise ConfigError(f"{where}.eps={q.eps} must be > 0 (paper: 1e-5)")
    if q.chunk_size < 1:
        raise ConfigError(f"{where}.chunk_size={q.chunk_size} must be >= 1")


def validate(cfg: ModelConfig) -> ModelConfig:
    """Check a model config before anything is built; raise ConfigError naming the value and the fix."""
    b = cfg.backbone
    # SigLIP So400m/14 at 384 px is the one published exception: its stride-14 patch conv floors 384/14 to 27.
    if b.image_size % b.patch_size and b.arch == "tiny":
        raise ConfigError(
            f"backbone.image_size={b.image_size} is not divisible by backbone.patch_size={b.patch_size}; "
            f"use e.g. image_size={b.grid * b.patch_size}"
        )
    if b.width % b.heads:
        raise ConfigError(f"backbone.width={b.width} is not divisible by backbone.heads={b.heads}")
    taps = {"pixel_layer": cfg.pixel_layer, "shortcut_layer": cfg.shortcut_layer}
    taps["semantic_layer"] = cfg.semantic_layer
    for name, layer in taps.items():
        if layer is not None and not 1 <= layer <= b.layers:
            raise ConfigError(
                f"{name}={layer} is outside the backbone's blocks 1..{b.layers} (layers are 1-indexed)"
            )
    if cfg.shortcut_layer is not None and cfg.shortcut_layer >= cfg.pixel_layer:
        raise ConfigError(
            f"shortcut_layer={cfg.shortcut_layer} must come before pixel_layer={cfg.pixel_layer}"
        )
    if cfg.shared_quantizer and cfg.semantic_layer is not None and cfg.semantic_layer != cfg.pixel_layer:
        raise ConfigError(
            f"shared_quantizer=True needs pixel_layer == semantic_layer, got {cfg.pixel_layer} and "
            f"{cfg.semantic_layer}"
        )
    if cfg.shared_quantizer and cfg.semantic_layer is None:
        raise ConfigError("shared_quantizer=True needs a semantic branch; set semantic_layer = pixel_layer")
    if cfg.semantic_layer is not None and cfg.semantic_layer < cfg.pixel_layer:
        raise ConfigError(
            f"semantic_layer={cfg.semantic_layer} comes before pixel_layer={cfg.pixel_layer}: the semantic "
            "re-entry would feed quantized features to the pixel tap; tap the semantic layer deeper"
        )
    validate_quantizer(cfg.pixel_quantizer, "pixel_quantizer")
    if cfg.semantic_layer is not None:
        validate_quantizer(cfg.semantic_quantizer, "semantic_quantizer")
    for name, q in (("pixel_quantizer", cfg.pixel_quantizer), ("semantic_quantizer", cfg.semantic_quantizer)):
        if q.code_dim > b.width and (name == "pixel_quantizer" or cfg.semantic_layer is not None):
            raise ConfigError(
                f"{name}.code_dim={q.code_dim} exceeds backbone.width={b.width}; the pre-quant projection "
                "squeezes the width down to the code dim (paper: 1152 -> 32)"
            )
    group_norm_widths = {"backbone.width": b.width, "decoder_in_channels": cfg.decoder_in_channels}
    group_norm_widths.update({f"decoder_channels x {m}": cfg.decoder_channels * m for m in cfg.decoder_channel_mult})
    for name, width in group_norm_widths.items():
        if width % 32:
            raise ConfigError(f"{name} = {width} must be a multiple of 32 (the decoder's GroupNorm has 32 groups)")
    if b.width % cfg.proj_head_dim:
        raise ConfigError(
            f"backbone.width={b.width} must be a multiple of proj_head_dim={cfg.proj_head_dim} "
            "(the AttnProjection splits the width into heads of that size)"
        )
    if cfg.decoder_latent_grid > b.grid:
        raise ConfigError(
            f"decoder_latent_grid={cfg.decoder_latent_grid} exceeds the token grid {b.grid}; it may only shrink"
        )
    ups = len(cfg.decoder_channel_mult) - 1
    if cfg.decoder_latent_grid * 2**ups != b.image_size:
        raise ConfigError(
            f"decoder_latent_grid={cfg.decoder_latent_grid} x 2^{ups} upsamplings != image_size={b.image_size}; "
            "change decoder_latent_grid or the number of decoder_channel_mult levels"
        )
    return cfg
