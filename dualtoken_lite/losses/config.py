"""Every weight and constant of DualToken's objective, in one dataclass (docs/method.md §3, §4).

The released code hard-coded these inside its training loop (docs/method.md §7.5); here each is a field with the
paper's value as its default and a comment naming its role. Presets (``tiny``, ``so400m-384``) live in
``dualtoken_lite.training.presets``; which terms are on comes from the stage (``losses.stages``), the GAN's timing from
``losses.gan.GanSchedule``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualtoken_lite.settings import ConfigError, require_at_least, require_finite


@dataclass
class LossConfig:
    """Weights and constants of every loss term and of the discriminator (docs/method.md §3, §4)."""

    # reconstruction
    recon_kind: str = "mse"  # pixel loss on [-1, 1] images: "mse" (paper) or "l1"
    recon_weight: float = 5.0  # w_rec, weight of the pixel loss (paper: 5)
    perceptual_weight: float = 1.0  # w_lp, weight of LPIPS-VGG (paper: 1); 0 = no perceptual term, no VGG built
    vgg_weights: str | None = None  # torchvision's vgg16-397923af.pth; None = look in torch.hub.get_dir()/checkpoints
    allow_random_lpips: bool = False  # opt in to a random VGG backbone when no weights exist (logged as such)
    # commitment (each RVQOutput.commitment is the unweighted mean over depths of ||z - sum_{k<=d} q_k||^2)
    commit_pixel_weight: float = 5.0  # w_cp, pixel branch (paper: 5)
    commit_semantic_weight: float = 5.0  # w_cs, semantic branch (paper: 5)
    # semantic distillation against the frozen teacher
    sem_weight: float = 1.0  # s, multiplier of the whole semantic loss (release flag --sem_weight, 1)
    sem_token_weight: float = 5.0  # weight of [MSE - cos] on the semantic-layer tokens (B, N, C) (paper: 5)
    sem_pooled_weight: float = 1.0  # weight of [MSE - cos] on the pooled MAP-head embedding (B, E) (paper: 1)
    # adversarial, the tokenizer's side (L_G; the release calls it the generator's)
    gan_gen_weight: float = 0.75  # w_gan after the switch-on epoch (release: d_weight = 0.75)
    gan_gen_weight_first_epoch: float = 0.75  # w_gan during the switch-on epoch (release: 0.75 as well)
    adaptive_min: float = 0.3  # lower clamp of the adaptive weight g_w (release: 0.3)
    adaptive_max: float = 10.0  # upper clamp of g_w (release: 10)
    adaptive_eps: float = 1e-4  # eps in ||dL_nll|| / (||dL_G|| + eps) (VQGAN: 1e-4)
    adaptive_recon_weight: float = 1.0  # weight of the pixel loss inside L_nll (release: 1, not w_rec)
    # (the GAN's timing, start epoch/step and restart period, is the run's: TrainConfig + gan_schedule)
    # discriminator
    disc_loss_weight: float = 0.75  # w_disc after the switch-on epoch (release: 0.75)
    disc_loss_weight_first_epoch: float = 1.0  # w_disc during the switch-on epoch (release: 1)
    disc_hinge_slope: float = 0.01  # negative slope of lrelu in the hinge loss (release: F.leaky_relu's 0.01)
    disc_channels: int = 64  # base width of the PatchDiscriminator (paper: 64 -> 1,729,409 parameters)
    disc_layers: int = 3  # residual blocks of the discriminator (paper: 3 -> logits at h/8)
    disc_lr: float = 7.2e-5  # Adam learning rate of D (release: the tokenizer's --lr, 7.2e-5)
    disc_betas: tuple[float, float] = (0.5, 0.9)  # Adam betas of D (release: 0.5, 0.9)
    disc_weight_decay: float = 0.0  # Adam weight decay of D (release: 0)
    disc_warmup_epochs: float = 0.5  # linear warmup of D's lr from 0, in epochs after each (re)start (release)
    disc_min_lr: float = 4e-5  # floor of D's cosine lr decay (release: 4e-5)


def validate_loss_config(cfg: LossConfig) -> LossConfig:
    """Check a loss config before training; raise ValueError naming the field, the value and the fix."""
    require_finite(cfg)
    if cfg.disc_lr <= 0 or cfg.disc_min_lr < 0 or cfg.disc_warmup_epochs < 0 or cfg.disc_hinge_slope < 0:
        raise ConfigError(f"disc_lr={cfg.disc_lr} must be > 0; disc_min_lr={cfg.disc_min_lr}, disc_warmup_epochs="
                          f"{cfg.disc_warmup_epochs} and disc_hinge_slope={cfg.disc_hinge_slope} >= 0")
    if cfg.recon_kind not in ("mse", "l1"):
        raise ConfigError(f"recon_kind={cfg.recon_kind!r} must be 'mse' (paper) or 'l1'")
    require_at_least(cfg, ("recon_weight", "perceptual_weight", "commit_pixel_weight", "commit_semantic_weight",
                           "sem_weight", "sem_token_weight", "sem_pooled_weight", "gan_gen_weight",
                           "gan_gen_weight_first_epoch", "disc_loss_weight", "disc_loss_weight_first_epoch"), 0,
                     note="0 turns the term off")
    if not 0 < cfg.adaptive_min <= cfg.adaptive_max:
        raise ConfigError(
            f"adaptive clamp [{cfg.adaptive_min}, {cfg.adaptive_max}] must satisfy 0 < min <= max (paper 0.3, 10)"
        )
    if cfg.adaptive_eps <= 0:
        raise ConfigError(f"adaptive_eps={cfg.adaptive_eps} must be > 0 (VQGAN: 1e-4)")
    if cfg.disc_channels < 32 or cfg.disc_channels % 32:
        raise ConfigError(f"disc_channels={cfg.disc_channels} must be a positive multiple of 32 (GroupNorm 32)")
    if cfg.disc_layers < 1:
        raise ConfigError(f"disc_layers={cfg.disc_layers} must be >= 1 (paper: 3)")
    if len(cfg.disc_betas) != 2 or not all(0 <= b < 1 for b in cfg.disc_betas):
        raise ConfigError(f"disc_betas={cfg.disc_betas} must be two numbers in [0, 1) (paper: 0.5, 0.9)")
    return cfg
