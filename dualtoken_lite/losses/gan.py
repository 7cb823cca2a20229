"""The adversarial part of DualToken's objective: the patch discriminator and its schedule (docs/method.md §3, §4).

1. The discriminator. A PatchGAN-like critic in the release's layout (taming-transformers' NLayerDiscriminator with residual blocks):

    conv3x3 stride 2, 3 -> 64, LeakyReLU(0.2)                         (h/2)
    ResBlock 64 -> 128, stride 2                                      (h/4)
    ResBlock 128 -> 256, stride 2                                     (h/8)
    ResBlock 256 -> 512, stride 1                                     (h/8)
    conv3x3 512 -> 1: one real/fake logit per patch                   (B, 1, h/8, w/8)

Each ResBlock is GroupNorm(32) -> LeakyReLU(0.2) -> conv3x3 (with the block's stride), plus a shortcut that
resizes the input bilinearly to the output grid and maps channels with a 1x1 conv. At 384 px this is exactly
1,729,409 parameters with a 48x48 logit map. Conv weights start from N(0, 0.02) (DCGAN init); biases and norms
keep PyTorch's defaults, as in the release.

2. The schedule (``GanSchedule``): when the adversarial terms are on, at which weight, and when the
discriminator restarts, read off the release's training loop and expressed in optimizer steps (``step`` counts
optimizer steps from 0; ``steps_per_epoch`` of them make an epoch):

* switch-on: the discriminator starts in the SECOND half of the 0-based epoch ``start_epoch``, i.e. at batch
  ``i >= steps_per_epoch / 2`` of that epoch -> first active step ``start_epoch * S + ceil(S / 2)``.
  (``start_at_epoch_begin=True`` is the release's ``--load_from`` variant: on from the epoch's first step.)
* weights: during the switch-on epoch the discriminator loss has weight 1, afterwards 0.75. The tokenizer's
  adversarial term is ``0.75 * g_w * L_G`` throughout in the release; all four weights are ``LossConfig`` fields,
  read from it (never copied), so the other reading ("weight 1 in that epoch" on the tokenizer's side) is one
  override away: ``--loss.gan_gen_weight_first_epoch 1``.
* restart: every ``restart_every`` epochs after ``start_epoch`` the discriminator and its optimizer are re-created
  at the first step of epoch ``start_epoch + k * restart_every`` (k >= 1). The release's run uses
  ``--gan_start_epoch 0 --restart_gan 20`` with 20 epochs: no restart happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dualtoken_lite.losses.config import LossConfig

LEAKY_SLOPE = 0.2  # negative slope of the LeakyReLUs inside the network (not the one of the hinge loss)
INIT_STD = 0.02  # std of the N(0, std) init of every conv weight


class DiscResBlock(nn.Module):
    """GroupNorm32 -> LeakyReLU -> conv3x3 (stride s), plus a resized 1x1-conv shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.leaky_relu(self.norm(x), LEAKY_SLOPE))  # (B, C_out, h', w')
        if h.shape[-2:] != x.shape[-2:]:
            # bilinear resize to the strided grid (for a /2 stride this is 2x2 average pooling)
            x = F.interpolate(x, size=h.shape[-2:], mode="bilinear", align_corners=False)
        if self.shortcut is not None:
            x = self.shortcut(x)
        return x + h


class PatchDiscriminator(nn.Module):
    """Maps images (B, 3, h, w) in [-1, 1] to patch logits (B, 1, h/8, w/8) for 3 layers."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3):
        super().__init__()
        if base_channels % 32:
            raise ValueError(
                f"base_channels={base_channels} must be a multiple of 32 (GroupNorm uses 32 groups); "
                "use e.g. 32 or 64 (paper: 64)"
            )
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers} must be >= 1 (paper: 3)")
        self.conv_in = nn.Conv2d(in_channels, base_channels, kernel_size=3, stride=2, padding=1)
        blocks, mult = [], 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last block keeps the resolution
            blocks.append(DiscResBlock(base_channels * prev, base_channels * mult, stride))
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = nn.Conv2d(base_channels * mult, 1, kernel_size=3, stride=1, padding=1)
        self.apply(init_discriminator_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv_in(x), LEAKY_SLOPE)  # (B, c, h/2, w/2)
        h = self.blocks(h)  # (B, 8c, h/8, w/8) for n_layers = 3
        return self.conv_out(h)  # (B, 1, h/8, w/8): one logit per patch


def init_discriminator_weights(module: nn.Module) -> None:
    """DCGAN init: every conv weight ~ N(0, 0.02); biases and GroupNorm affine keep their defaults."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, INIT_STD)


def build_discriminator(base_channels: int = 64, n_layers: int = 3, device=None) -> PatchDiscriminator:
    """A freshly initialised discriminator (the GAN schedule re-creates one at every restart)."""
    return PatchDiscriminator(3, base_channels, n_layers).to(device)


@dataclass(frozen=True)
class GanSchedule:
    """The adversarial schedule in epochs, answered in steps; pure functions of the global step."""

    steps_per_epoch: int  # S, optimizer steps per epoch (after gradient accumulation)
    start_epoch: int | None = 0  # 0-based epoch in whose second half the GAN switches on; None = never
    restart_every: int | None = None  # re-create D every N epochs after start_epoch; None = never
    weights: LossConfig = field(default_factory=LossConfig)  # gan_gen_weight[_first_epoch], disc_loss_weight[...]
    start_at_epoch_begin: bool = False  # switch on at the start of start_epoch instead of its middle
    start_at_step: int | None = None  # an exact first step instead (wins over start_epoch; its epoch is "first")

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch} must be >= 1")
        if self.start_epoch is not None and self.start_epoch < 0:
            raise ValueError(f"start_epoch={self.start_epoch} must be >= 0 (0-based) or None for no GAN")
        if self.start_at_step is not None and self.start_at_step < 0:
            raise ValueError(f"start_at_step={self.start_at_step} must be >= 0, or None to use start_epoch")
        if self.restart_every is not None and self.restart_every < 1:
            raise ValueError(f"restart_every={self.restart_every} must be >= 1 epochs, or None for never")

    @classmethod
    def build(cls, loss_cfg: LossConfig, steps_per_epoch: int, start_epoch: int | None,
              restart_every: int | None = None, start_step: int | None = None,
              start_at_epoch_begin: bool = False) -> GanSchedule:
        """Timing from the run (epochs or a step), weights from ``loss_cfg``."""
        return cls(steps_per_epoch=steps_per_epoch, start_epoch=start_epoch, restart_every=restart_every,
                   weights=loss_cfg, start_at_epoch_begin=start_at_epoch_begin, start_at_step=start_step)

    @property
    def first_epoch(self) -> int | None:
        """The switch-on epoch (0-based) that weights and restarts count from; None if the GAN never starts.

        It is ``start_epoch`` even when its second half is empty (S = 1: the GAN then starts one epoch later,
        already at the later weight, as in the release), or the epoch of ``start_at_step``.
        """
        if self.start_at_step is not None:
            return self.start_at_step // self.steps_per_epoch
        return self.start_epoch

    @property
    def start_step(self) -> int | None:
        """First step with the GAN on: ``start_epoch * S + ceil(S / 2)`` (None if it never starts)."""
        if self.start_at_step is not None:
            return self.start_at_step
        if self.start_epoch is None:
            return None
        offset = 0 if self.start_at_epoch_begin else (self.steps_per_epoch + 1) // 2  # first i >= S / 2
        return self.start_epoch * self.steps_per_epoch + offset

    def epoch(self, step: int) -> int:
        """0-based epoch that ``step`` belongs to."""
        _check_step(step)
        return step // self.steps_per_epoch

    def gan_active(self, step: int) -> bool:
        """Whether the discriminator trains and the tokenizer gets an adversarial term at ``step``."""
        _check_step(step)
        return self.start_step is not None and step >= self.start_step

    def in_first_epoch(self, step: int) -> bool:
        """Whether ``step`` lies in the switch-on epoch (while the GAN is active)."""
        return self.gan_active(step) and self.epoch(step) == self.first_epoch

    def gan_weight(self, step: int) -> float:
        """Generator-side adversarial weight at ``step`` (0 while the GAN is off)."""
        if not self.gan_active(step):
            return 0.0
        w = self.weights
        return w.gan_gen_weight_first_epoch if self.in_first_epoch(step) else w.gan_gen_weight

    def disc_loss_weight(self, step: int) -> float:
        """Weight of the discriminator's loss at ``step`` (0 while the GAN is off)."""
        if not self.gan_active(step):
            return 0.0
        w = self.weights
        return w.disc_loss_weight_first_epoch if self.in_first_epoch(step) else w.disc_loss_weight

    def should_restart(self, step: int) -> bool:
        """True at the first step of epoch ``start_epoch + k * restart_every`` for k >= 1."""
        if not self.gan_active(step) or self.restart_every is None or step % self.steps_per_epoch:
            return False
        since = self.epoch(step) - self.first_epoch
        return since > 0 and since % self.restart_every == 0


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step={step} must be >= 0 (steps count optimizer updates from 0)")
