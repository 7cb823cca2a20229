"""From quantized pixel tokens to pixels: resize, post-quant ResNet block, taming-style conv decoder (docs/method.md §2).

The pixel branch's post-quant projection gives a (B, N, C) sequence; the model lays it out as a (B, C, H, W)
map and this module finishes the path:

    (B, C, H, W) --bilinear--> (B, C, g, g)            g = decoder latent grid (27 -> 24 in the paper)
      --PostQuantResBlock--> (B, C_in, g, g)            GroupNorm+SiLU+1x1 conv, GroupNorm+SiLU+3x3 conv, 1x1 skip
      --ConvDecoder--> (B, 3, h, w)                     conv_in, mid (ResBlock, attention, ResBlock), then one level
                                                        per channel multiplier, lowest resolution first, each with
                                                        ``res_blocks + 1`` ResBlocks (+ attention at the lowest
                                                        resolution) and a nearest x2 upsample + 3x3 conv between
                                                        levels; GroupNorm, SiLU, 3x3 conv to RGB in [-1, 1] (no tanh)

This is the VQGAN ("taming transformers") decoder that RQ-VAE and VILA-U reuse. At paper scale (C = 1152,
C_in = 1024, base 128, multipliers 8, 4, 4, 1, 1, 2 + 1 ResBlocks per level) it has exactly 11,803,904
(post-quant block) and 168,449,667 (decoder) parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dualtoken_lite.model.group_norm import DecoderGroupNorm

GROUPS = 32  # GroupNorm groups everywhere in the decoder (taming's choice; ModelConfig.decoder_norm_groups)


def group_norm(channels: int, groups: int = GROUPS) -> DecoderGroupNorm:
    """GroupNorm with ``groups`` groups (taming: 32) and eps 1e-6, as in every taming-style decoder.

    Mind the channels per group: with one channel per group (32 channels, 32 groups) the norm is an instance norm
    that erases each channel's per-image mean and scale, so the decoder cannot set an image's colour amplitude.
    """
    if channels % groups:
        raise ValueError(f"GroupNorm({groups}) needs channels divisible by {groups}, got {channels}")
    return DecoderGroupNorm(groups, channels, eps=1e-6)




def resize_to_latent_grid(z: torch.Tensor, grid: int) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) map to (B, C, grid, grid); identity when the size already matches."""
    if z.shape[-2:] == (grid, grid):
        return z
    return F.interpolate(z, size=(grid, grid), mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """``x + conv3(SiLU(GN(conv3(SiLU(GN x)))))``, with a 1x1 conv on the skip when the channels change."""

    def __init__(self, c_in: int, c_out: int, first_kernel: int = 3, groups: int = GROUPS):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, first_kernel, padding=first_kernel // 2)
        self.norm2, self.conv2 = group_norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class PostQuantResBlock(ResBlock):
    """The bridge from the backbone width to the decoder: like a ResBlock, but its first conv is 1x1 (docs/method.md §2)."""

    def __init__(self, c_in: int, c_out: int, groups: int = GROUPS):
        super().__init__(c_in, c_out, first_kernel=1, groups=groups)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a (B, C, H, W) map, with GroupNorm and a residual."""

    def __init__(self, channels: int, groups: int = GROUPS):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (f(h).flatten(2).transpose(1, 2) for f in (self.q, self.k, self.v))  # 3 x (B, HW, C)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v: (B, HW, C)
        return x + self.proj_out(a.transpose(1, 2).reshape(B, C, H, W))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DecoderLevel(nn.Module):
    """One resolution of the decoder: ``n_blocks`` ResBlocks (each followed by attention if ``attn``)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attn: bool, upsample: bool, groups: int = GROUPS):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out, groups=groups) for i in range(n_blocks))
        self.attns = nn.ModuleList(AttnBlock(c_out, groups) for _ in range(n_blocks)) if attn else None
        self.upsample = Upsample(c_out) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attns is not None:
                x = self.attns[i](x)
        return self.upsample(x) if self.upsample is not None else x


class ConvDecoder(nn.Module):
    """Taming-style decoder: (B, in_channels, g, g) -> (B, 3, g * 2^(levels-1), same) in [-1, 1] scale.

    Args:
        in_channels: channels of the input map (paper: 1024).
        channels: base channel count (paper: 128).
        channel_mult: per level, lowest resolution first (paper: 8, 4, 4, 1, 1).
        res_blocks: ResBlocks per level = res_blocks + 1 (paper: 2).
        groups: GroupNorm groups (paper: 32).
    """

    def __init__(self, in_channels: int, channels: int, channel_mult: tuple[int, ...], res_blocks: int,
                 groups: int = GROUPS):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mid = nn.Sequential(ResBlock(widths[0], widths[0], groups=groups), AttnBlock(widths[0], groups),
                                 ResBlock(widths[0], widths[0], groups=groups))
        c_in, levels = widths[0], []
        for i, c_out in enumerate(widths):
            last = i == len(widths) - 1
            levels.append(DecoderLevel(c_in, c_out, res_blocks + 1, attn=i == 0, upsample=not last, groups=groups))
            c_in = c_out
        self.levels = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in, groups)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)  # the last layer: the adaptive GAN weight is taken here

    @property
    def upsampling(self) -> int:
        """Output pixels per latent position along each side: 2^(levels - 1)."""
        return 2 ** (len(self.levels) - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, channels * mult[0], g, g)
        for level in self.levels:
            h = level(h)  # channels change per level; side doubles between levels
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, h, w), no tanh
