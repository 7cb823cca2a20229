"""The tokenizer's configuration: the backbone, the two branches, the decoder (plain dataclasses).

Every knob of the model lives here, with a comment saying what it means and what the paper uses
(docs/method.md §2). A config is validated by ``validate()`` before any weights are built or any data is read.
The field defaults are a small tokenizer; the named model sizes (``tiny``, the paper's ``so400m-384``, ...) are the
table ``MODEL_PRESETS`` at the end of this file, and a whole run (model, losses, training) per name is
``training/presets.py``.

Notation used for shapes everywhere in the project:
    B batch, H x W token grid, N = H * W tokens, C backbone width, d code dim, D residual depth,
    K codebook size, (h, w) image height and width in pixels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from dualtoken_lite.quantizers.residual import QuantizerConfig, validate_quantizer
from dualtoken_lite.settings import ConfigError, from_dict, require_at_least, require_finite

RANDOM_WEIGHTS = "random"  # backbone.pretrained value that asks for a randomly initialised tower on purpose


@dataclass
class BackboneConfig:
    """The SigLIP-style vision tower (a timm ``VisionTransformer`` trunk: no class token, MAP pooling head)."""

    arch: str = "tiny"  # "tiny" (built from the fields below) or an open_clip model name, e.g. "ViT-SO400M-14-SigLIP-384"
    pretrained: str | None = None  # None or "random" = random init; an open_clip tag ("webli"); "hf:<repo id>" or a
    #                                transformers SigLIP/SigLIP2 folder (model/hf_siglip.py); or a local weights file/folder
    image_size: int = 64  # input resolution in pixels (square)
    patch_size: int = 8  # ViT patch size; the token grid is image_size // patch_size on each side
    width: int = 128  # C, the transformer width
    layers: int = 6  # number of transformer blocks
    heads: int = 4  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio * width
    activation: str = "gelu"  # GELU of the blocks' and the MAP head's MLPs: "gelu" (exact) or "gelu_tanh" (the tanh
    #                          approximation SigLIP was trained with; transformers' "gelu_pytorch_tanh")
    grad_checkpointing: bool = False  # recompute encoder blocks in backward (saves memory at paper scale)

    @property
    def grid(self) -> int:
        """Tokens per side of the grid: 27 for so400m-384, 8 for tiny."""
        return self.image_size // self.patch_size


@dataclass
class ModelConfig:
    """The DualToken tokenizer: one backbone, a pixel branch and a semantic branch (docs/method.md §2)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_layer: int = 2  # 1-indexed block whose output feeds the pixel codebook (paper: 6)
    shortcut_layer: int | None = 1  # 1-indexed block added to the pixel input with shortcut_weight (paper: 4);
    #                                 0 = the patch embedding's output (before block 1)
    shortcut_weight: float = 0.6  # weight of the shortcut layer's projection (paper: 0.6)
    semantic_layer: int | None = 5  # 1-indexed block feeding the semantic codebook (paper: 26); None = no branch
    shared_quantizer: bool = False  # ablation: pixel and semantic share one layer and one quantizer
    pixel_bypass: bool = False  # ceiling: decode the continuous pre-quant vectors z (codes still computed, no commitment)
    pixel_quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(depth=8, codebook_size=512))
    semantic_quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig(depth=4, codebook_size=512)
    )
    projection: str = "attention"  # pre/post-quant projections: "attention" (AttnProjection, the paper's and the
    #                                release's) or "conv" (ResNet blocks on the grid, the early release's dim-256 model)
    proj_head_dim: int = 32  # head size inside the pixel branch's AttnProjections (paper: 32 -> 36 heads)
    semantic_proj_head_dim: int | None = None  # head size in the semantic branch's; None = proj_head_dim (the
    #                                            release sizes each branch's heads from its own code dim)
    decoder_latent_grid: int = 8  # the decoder's input grid after the bilinear resize (paper: 24)
    decoder_channels: int = 32  # base channels of the conv decoder (paper: 128); tiny keeps 64 px levels thin
    decoder_channel_mult: tuple[int, ...] = (4, 2, 1, 1)  # per level, lowest resolution first (paper: 8,4,4,1,1)
    decoder_res_blocks: int = 1  # ResBlocks per level = decoder_res_blocks + 1 (paper: 2 -> 3)
    decoder_in_channels: int = 128  # channels after the post-quant ResNet block (paper: 1024)
    decoder_norm_groups: int = 32  # GroupNorm groups in the post-quant block, the decoder and conv projections (paper
    #                                and release: 32, >= 4 channels per group there); 32 on 32 channels = instance norm


ACTIVATIONS = ("gelu", "gelu_tanh")  # BackboneConfig.activation values (timm's names)
PROJECTIONS = ("attention", "conv")  # ModelConfig.projection values
RETIRED_FIELDS = ("proj_pool_heads",)  # ModelConfig fields of earlier versions, read only to refuse them when set


def validate(cfg: ModelConfig) -> ModelConfig:
    """Check a model config before anything is built; raise ConfigError naming the value and the fix."""
    require_finite(cfg)
    b = cfg.backbone
    require_at_least(b, ("image_size", "patch_size", "width", "layers", "heads"), 1, where="backbone.")
    if b.mlp_ratio <= 0 or cfg.decoder_channels < 1 or cfg.decoder_in_channels < 1:
        raise ConfigError(f"backbone.mlp_ratio={b.mlp_ratio}, decoder_channels={cfg.decoder_channels} and "
                          f"decoder_in_channels={cfg.decoder_in_channels} must be > 0")
    if cfg.decoder_res_blocks < 0 or cfg.decoder_latent_grid < 1 or not cfg.decoder_channel_mult or \
            min(cfg.decoder_channel_mult) < 1:
        raise ConfigError(f"decoder_res_blocks={cfg.decoder_res_blocks} must be >= 0, decoder_latent_grid="
                          f"{cfg.decoder_latent_grid} >= 1, decoder_channel_mult={cfg.decoder_channel_mult} positive")
    # SigLIP So400m/14 at 384 px is the one published exception: its stride-14 patch conv floors 384/14 to 27.
    if b.image_size % b.patch_size and b.arch == "tiny":
        raise ConfigError(
            f"backbone.image_size={b.image_size} is not divisible by backbone.patch_size={b.patch_size}; "
            f"use e.g. image_size={b.grid * b.patch_size}"
        )
    if b.width % b.heads:
        raise ConfigError(f"backbone.width={b.width} is not divisible by backbone.heads={b.heads}")
    if b.activation not in ACTIVATIONS:
        raise ConfigError(f"backbone.activation={b.activation!r} is not one of {ACTIVATIONS}")
    if cfg.projection not in PROJECTIONS:
        raise ConfigError(f"projection={cfg.projection!r} is not one of {PROJECTIONS}")
    taps = {"pixel_layer": cfg.pixel_layer, "shortcut_layer": cfg.shortcut_layer}
    taps["semantic_layer"] = cfg.semantic_layer
    for name, layer in taps.items():
        lowest = 0 if name in ("pixel_layer", "shortcut_layer") else 1  # 0 = the patch embedding's output
        if layer is not None and not lowest <= layer <= b.layers:
            raise ConfigError(
                f"{name}={layer} is outside the backbone's blocks 1..{b.layers} (layers are 1-indexed; the pixel "
                "and shortcut taps also accept 0 = the patch embedding's output)"
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
    if cfg.projection == "conv":  # its ResNet blocks normalise the code vectors too
        group_norm_widths.update({f"{q}.code_dim": getattr(cfg, q).code_dim for q in ("pixel_quantizer",
                                  "semantic_quantizer")})
    groups = cfg.decoder_norm_groups
    for name, width in group_norm_widths.items():
        if groups < 1 or width % groups:
            raise ConfigError(f"{name} = {width} must be a multiple of {groups} "
                              "(decoder_norm_groups, the decoder's GroupNorm groups)")
    for name in ("proj_head_dim", "semantic_proj_head_dim"):
        head = getattr(cfg, name)
        if head is not None and (head < 1 or b.width % head):
            raise ConfigError(
                f"backbone.width={b.width} must be a multiple of {name}={head} "
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


def so400m_model(image_size: int, patch_size: int, arch: str, depth: int, pretrained: str | None = None
                 ) -> ModelConfig:
    """The paper-scale tokenizer (docs/method.md §2) at a given resolution and residual depth."""
    grid = image_size // patch_size
    return ModelConfig(
        backbone=BackboneConfig(
            arch=arch,
            pretrained=pretrained,
            image_size=image_size,
            patch_size=patch_size,
            width=1152,
            layers=27,
            heads=16,
            mlp_ratio=4304 / 1152,
            activation="gelu_tanh",  # SigLIP and SigLIP2 were trained with tanh-approximate GELU
            grad_checkpointing=True,
        ),
        pixel_layer=6,
        shortcut_layer=4,
        shortcut_weight=0.6,
        semantic_layer=26,
        pixel_quantizer=QuantizerConfig(code_dim=32, depth=depth, codebook_size=16384),
        semantic_quantizer=QuantizerConfig(code_dim=32, depth=depth, codebook_size=16384),
        proj_head_dim=32,
        decoder_latent_grid=(grid // 8) * 8 if grid % 8 else grid,  # 27 -> 24 (resize 27x27 -> 24x24)
        decoder_channels=128,
        decoder_channel_mult=(8, 4, 4, 1, 1),
        decoder_res_blocks=2,
        decoder_in_channels=1024,
    )


def so400m_dim256_model() -> ModelConfig:
    """The early release's tokenizer, the one its model zoo linked (docs/method.md §2, "the dim-256 model"):
    SigLIP v1 So400m/14-384, ResNet-block projections, pixel tap 6 without a shortcut, semantic tap 26, code dim
    256, K = 32,768, depth 8, the same decoder."""
    cfg = so400m_model(384, 14, "ViT-SO400M-14-SigLIP-384", depth=8)
    cfg.shortcut_layer, cfg.projection = None, "conv"
    for quantizer in (cfg.pixel_quantizer, cfg.semantic_quantizer):
        quantizer.code_dim, quantizer.codebook_size = 256, 32768
    return cfg


# The named model sizes. Training presets of the same names (training/presets.py) add the losses and the recipe.
MODEL_PRESETS: dict[str, ModelConfig] = {
    # 64 px, patch 8 -> 8 x 8 grid, a few million parameters: the main job on a laptop CPU (the tiny world).
    "tiny": ModelConfig(
        # The pixel codebook reads block 1 of 6, the paper's depth (block 6 of 27), so both objectives train the
        # tower's first block. No shortcut: the paper's adds block 4 to block 6; here the only earlier block is the
        # patch embedding, which would skip the shared block, and block 2 + 0.6 x block 1 reconstructs no better
        # than block 1 alone (docs/tiny_recipe.md).
        pixel_layer=1,
        shortcut_layer=None,
        # 8 GroupNorm groups: the paper's 32 groups on tiny's 32-channel decoder levels are an instance norm
        # that erases every channel's per-image mean, i.e. the image's colour (docs/tiny_recipe.md).
        decoder_norm_groups=8,
    ),
    # The paper's model: SigLIP So400m/14 at 384 px, 27 x 27 grid, RVQ depth 8, K = 16,384.
    "so400m-384": so400m_model(384, 14, "ViT-SO400M-14-SigLIP-384", depth=8),
    # The same model on the released code's tower (docs/method.md §2): SigLIP2 weights from transformers.
    "so400m-384-siglip2": so400m_model(384, 14, "ViT-SO400M-14-SigLIP-384", depth=8,
                                       pretrained="hf:google/siglip2-so400m-patch14-384"),
    # The 256 px variant: SigLIP2 So400m/16 at 256 px, 16 x 16 grid, RVQ depth 4.
    "so400m-256": so400m_model(256, 16, "ViT-SO400M-16-SigLIP2-256", depth=4),
    # The early release's published tokenizer: conv projections, code dim 256, K = 32,768, no shortcut.
    "so400m-384-dim256": so400m_dim256_model(),
}


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of a named model size (changing it never changes the table)."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return copy.deepcopy(MODEL_PRESETS[name])


def model_config_from_dict(data: dict, where: str = "model") -> ModelConfig:
    """A ModelConfig from ``to_dict``'s output, including configs written before the current fields existed.

    Those built the tower with exact GELU (timm's default) whatever weights it held, so a missing
    ``backbone.activation`` reads as "gelu": an older folder loads as the same network it was. A retired field
    is dropped when it holds its old default and refused otherwise (the layout it asked for never existed).
    """
    if not isinstance(data, dict) or not isinstance(data.get("backbone", {}), dict):
        return from_dict(ModelConfig, data, where)  # from_dict names what is wrong
    data = dict(data)
    for name in RETIRED_FIELDS:
        if data.pop(name, False):
            raise ConfigError(f"{where}.{name}=true: the pooled-head projection of a code-dim-256 AttnProjection "
                              "model, a layout the release never had, is no longer built; convert the "
                              "release checkpoint again (python -m dualtoken_lite convert)")
    data["backbone"] = {"activation": "gelu", **data.get("backbone", {})}
    return from_dict(ModelConfig, data, where)
