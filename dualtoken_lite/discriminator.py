"""The patch discriminator of the adversarial loss (SPEC §3).

A PatchGAN-like critic in the release's layout (taming-transformers' NLayerDiscriminator with residual blocks):

    conv3x3 stride 2, 3 -> 64, LeakyReLU(0.2)                         (h/2)
    ResBlock 64 -> 128, stride 2                                      (h/4)
    ResBlock 128 -> 256, stride 2                                     (h/8)
    ResBlock 256 -> 512, stride 1                                     (h/8)
    conv3x3 512 -> 1: one real/fake logit per patch                   (B, 1, h/8, w/8)

Each ResBlock is GroupNorm(32) -> LeakyReLU(0.2) -> conv3x3 (with the block's stride), plus a shortcut that
resizes the input bilinearly to the output grid and maps channels with a 1x1 conv. At 384 px this is exactly
1,729,409 parameters with a 48x48 logit map. Conv weights start from N(0, 0.02) (DCGAN init); biases and norms
keep PyTorch's defaults, as in the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (1,729,409 for the paper's discriminator)."""
    return sum(p.numel() for p in module.parameters())
