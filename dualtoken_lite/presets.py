"""The named presets: every setting of a run (model, losses, training) for each scale, in one table.

    cfg = preset("tiny")                 # a TrainConfig: cfg.model (ModelConfig), cfg.loss (LossConfig), ...
    model_cfg = model_preset("so400m-384")

| preset | what |
|---|---|
| ``tiny`` | 64 px, patch 8 -> 8 x 8 grid, a few million parameters: the main job on a laptop CPU, trained on the tiny world |
| ``so400m-384`` | the paper's model: SigLIP So400m/14 at 384 px, 27 x 27 grid, RVQ depth 8, K = 16,384, the released recipe |
| ``so400m-384-siglip2`` | the same model on the released code's tower: transformers' SigLIP2 so400m-patch14-384 |
| ``so400m-256`` | the 256 px variant: SigLIP2 So400m/16 at 256 px, 16 x 16 grid, RVQ depth 4 |
| ``so400m-384-dim256`` | the early release's published tokenizer: conv projections, code dim 256, K = 32,768, no shortcut |

The paper presets name no starting weights except ``so400m-384-siglip2``: training one refuses until
``--model.backbone.pretrained`` names them (``webli``, ``hf:<repo id>``, a folder, or ``random`` on purpose).

Every preset is a fresh copy on each call, so changing one never changes the table. The fields and what they
mean are documented where they are defined: ``model/config.py``, ``losses/config.py``, ``training/config.py``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

from dualtoken_lite.losses.config import LossConfig, validate_loss_config
from dualtoken_lite.model.config import BackboneConfig, ModelConfig
from dualtoken_lite.quantizers.residual import QuantizerConfig
from dualtoken_lite.settings import ConfigError, from_dict
from dualtoken_lite.training.config import TrainConfig


def _so400m_model(image_size: int, patch_size: int, arch: str, depth: int, pretrained: str | None = None
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


def _so400m_dim256_model() -> ModelConfig:
    """The early release's tokenizer, the one its model zoo linked (docs/method.md §2, "the dim-256 model"):
    SigLIP v1 So400m/14-384, ResNet-block projections, pixel tap 6 without a shortcut, semantic tap 26, code dim
    256, K = 32,768, depth 8, the same decoder."""
    cfg = _so400m_model(384, 14, "ViT-SO400M-14-SigLIP-384", depth=8)
    cfg.shortcut_layer, cfg.projection = None, "conv"
    for quantizer in (cfg.pixel_quantizer, cfg.semantic_quantizer):
        quantizer.code_dim, quantizer.codebook_size = 256, 32768
    return cfg


def _so400m_run(name: str, model: ModelConfig) -> TrainConfig:
    """The released recipe (docs/method.md §4): 20 epochs of 10M CC12M samples, AdamW 7.2e-5, GAN from epoch 0."""
    return TrainConfig(
        preset=name, out=f"runs/{name}", train_data="", eval_data=None, train_num_samples=10_000_000, epochs=20,
        max_steps=None, batch_size=32, lr=7.2e-5, beta1=0.5, beta2=0.9, weight_decay=1e-4, warmup_steps=10_000,
        gan_start_epoch=0, restart_gan=20, teacher="backbone", workers=4, log_every=50, image_every=2000,
        eval_every=0, save_every=5000, model=model, loss=LossConfig(),
    )


PRESETS: dict[str, TrainConfig] = {
    # The TrainConfig and ModelConfig defaults are the tiny main job, except the fields set below. Its losses are the paper's except: no
    # perceptual term (LPIPS needs torchvision's ImageNet VGG16 weights, which cannot be downloaded offline, and at
    # 64 px VGG's deepest LPIPS features are 4x4 maps, far below the 64-256 px patches LPIPS was calibrated on),
    # and a narrower discriminator (32 base channels, 434,625 parameters, 8x8 logits at 64 px) for the small decoder.
    "tiny": TrainConfig(
        preset="tiny",
        bf16=True,  # bf16 autocast on the CPU too: 1.36x faster steps, PSNR unchanged (benchmarks/step_speed.py)
        model=ModelConfig(
            # The pixel codebook reads the patch embedding (tap 0), not block 2 + 0.6 x block 1: the tiny teacher
            # learned to ignore colour (its shapes come in random colours), so its blocks pass too little colour
            # to learn from, and reconstructions came out grey; its patch embedding still carries it all
            # (docs/tiny_recipe.md). The paper's SigLIP keeps colour at block 6.
            pixel_layer=0,
            shortcut_layer=None,
            # 8 GroupNorm groups: the paper's 32 groups on tiny's 32-channel decoder levels are an instance norm
            # that erases every channel's per-image mean, i.e. the image's colour (docs/tiny_recipe.md).
            decoder_norm_groups=8,
        ),
        loss=LossConfig(perceptual_weight=0.0, disc_channels=32),
    ),
    "so400m-384": _so400m_run("so400m-384", _so400m_model(384, 14, "ViT-SO400M-14-SigLIP-384", depth=8)),
    # The released code's tower (docs/method.md §2): same architecture, SigLIP2 weights from transformers.
    "so400m-384-siglip2": _so400m_run("so400m-384-siglip2", _so400m_model(
        384, 14, "ViT-SO400M-14-SigLIP-384", depth=8, pretrained="hf:google/siglip2-so400m-patch14-384")),
    "so400m-256": _so400m_run("so400m-256", _so400m_model(256, 16, "ViT-SO400M-16-SigLIP2-256", depth=4)),
    "so400m-384-dim256": _so400m_run("so400m-384-dim256", _so400m_dim256_model()),
}


def preset(name: str) -> TrainConfig:
    """A fresh copy of a named preset: the whole run, with its model and loss configs inside."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset's tokenizer config."""
    return preset(name).model


def loss_preset(name: str, overrides: dict | None = None) -> LossConfig:
    """A fresh copy of a named preset's loss config with ``overrides`` (field -> value) applied and validated."""
    base = asdict(preset(name).loss)
    unknown = set(overrides or {}) - set(base)
    if unknown:
        raise ConfigError(f"LossConfig has no field(s) {sorted(unknown)}; known fields: {sorted(base)}")
    return validate_loss_config(from_dict(LossConfig, {**base, **(overrides or {})}))
