"""The named presets: every setting of a run (model, losses, training) for each scale, in one table.

    cfg = preset("tiny")                 # a TrainConfig: cfg.model (ModelConfig), cfg.loss (LossConfig), ...
    model_cfg = model_preset("so400m-384")   # the model alone: model/config.py's table of model sizes

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
mean are documented where they are defined: ``model/config.py`` (which also holds the model sizes, ``MODEL_PRESETS``),
``losses/config.py``, ``training/config.py``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

from dualtoken_lite.losses.config import LossConfig, validate_loss_config
from dualtoken_lite.model.config import ModelConfig, model_preset
from dualtoken_lite.settings import ConfigError, from_dict
from dualtoken_lite.training.config import TrainConfig


def _so400m_run(name: str, model: ModelConfig) -> TrainConfig:
    """The released recipe (docs/method.md §4): 20 epochs of 10M CC12M samples, AdamW 7.2e-5, GAN from epoch 0."""
    return TrainConfig(
        preset=name, out=f"runs/{name}", train_data="", eval_data=None, train_num_samples=10_000_000, epochs=20,
        max_steps=None, batch_size=32, lr=7.2e-5, beta1=0.5, beta2=0.9, weight_decay=1e-4, warmup_steps=10_000,
        gan_start_epoch=0, restart_gan=20, teacher="backbone", workers=4, log_every=50, image_every=2000,
        eval_every=0, save_every=5000, model=model, loss=LossConfig(),
    )


PRESETS: dict[str, TrainConfig] = {
    # The TrainConfig defaults are the tiny main job, except the fields set below; its model is model/config.py's
    # "tiny" size. Its losses are the paper's except: no
    # perceptual term (LPIPS needs torchvision's ImageNet VGG16 weights, which cannot be downloaded offline, and at
    # 64 px VGG's deepest LPIPS features are 4x4 maps, far below the 64-256 px patches LPIPS was calibrated on),
    # and a narrower discriminator (32 base channels, 434,625 parameters, 8x8 logits at 64 px) for the small decoder.
    "tiny": TrainConfig(
        preset="tiny",
        bf16=True,  # bf16 autocast on the CPU too: a precision choice (benchmarks/step_speed.py times each precision)
        model=model_preset("tiny"),
        loss=LossConfig(perceptual_weight=0.0, disc_channels=32),
    ),
    **{name: _so400m_run(name, model_preset(name))
       for name in ("so400m-384", "so400m-384-siglip2", "so400m-256", "so400m-384-dim256")},
}


def preset(name: str) -> TrainConfig:
    """A fresh copy of a named preset: the whole run, with its model and loss configs inside."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def loss_preset(name: str, overrides: dict | None = None) -> LossConfig:
    """A fresh copy of a named preset's loss config with ``overrides`` (field -> value) applied and validated."""
    base = asdict(preset(name).loss)
    unknown = set(overrides or {}) - set(base)
    if unknown:
        raise ConfigError(f"LossConfig has no field(s) {sorted(unknown)}; known fields: {sorted(base)}")
    return validate_loss_config(from_dict(LossConfig, {**base, **(overrides or {})}))
