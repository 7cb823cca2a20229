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

GROUPS = 32  # GroupNorm groups everywhere in the decoder (taming's choice)


def group_norm_backward_channels_last(dy, x, mean, rstd, weight, groups: int):
    """GroupNorm's backward in closed form on a channels_last map: dy, x (B, C, H, W) -> dx, d weight, d bias.

    With x_hat = (x - mu) rstd per (sample, group) of n = (C / G) H W elements, y = w x_hat + b:
        dx = rstd w dy + c2 x + c3,   c2 = (db_g mu - ds_g) rstd^3 / n,   c3 = -c2 mu - db_g rstd / n,
        ds_g = sum_{c in g} w_c sum_hw dy x,   db_g = sum_{c in g} w_c sum_hw dy      (the formula of PyTorch's kernel)
    Every full-size op reads (B, H*W, C) rows whose channels are contiguous, so they vectorise along C.
    """
    B, C, H, W = x.shape
    per_group = C // groups
    x3 = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # a view: channels_last is (B, H, W, C) in memory
    dy3 = dy.permute(0, 2, 3, 1).reshape(B, H * W, C)
    ds, db = (dy3 * x3).sum(1), dy3.sum(1)  # (B, C) each
    ds_g = (ds * weight).view(B, groups, per_group).sum(-1)  # (B, G)
    db_g = (db * weight).view(B, groups, per_group).sum(-1)
    c2 = (db_g * mean - ds_g) * rstd.pow(3) / (per_group * H * W)
    c3 = -c2 * mean - db_g * rstd / (per_group * H * W)
    c2, c3, mean, rstd = (t.repeat_interleave(per_group, dim=1) for t in (c2, c3, mean, rstd))  # (B, G) -> (B, C)
    dx = torch.addcmul(c3[:, None], x3, c2[:, None]).addcmul_(dy3, (rstd * weight)[:, None])  # (B, H*W, C)
    d_weight = ((ds - db * mean) * rstd).sum(0)  # sum over b, hw of dy x_hat
    return dx.view(B, H, W, C).permute(0, 3, 1, 2), d_weight, db.sum(0)


class ChannelsLastGroupNorm(torch.autograd.Function):
    """GroupNorm in fp32 whose backward is ``group_norm_backward_channels_last`` (same math as PyTorch's).

    The decoder's maps are channels_last (the layout the CPU convolutions are fastest in), and PyTorch's CPU
    GroupNorm backward is 2-4x slower in that layout than this closed form of whole-tensor ops (its forward
    is fast). Under bf16 autocast the statistics and the output are fp32, as CUDA's autocast does for group_norm.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        B, C, H, W = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, B, C, H * W, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)  # mean, rstd: (B, G)
        ctx.groups = groups
        return y  # (B, C, H, W), channels_last like x

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, d_weight, d_bias = group_norm_backward_channels_last(dy, x, mean, rstd, weight, ctx.groups)
        return dx, d_weight, d_bias, None, None


class DecoderGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same state dict) that can take the fast channels_last backward.

    ``fast_backward`` (off by default; the trainer sets it from ``TrainConfig.fast_group_norm``) routes
    channels_last CPU inputs that need a gradient through ``ChannelsLastGroupNorm``; all else takes the plain path.
    """

    fast_backward: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = (self.fast_backward and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
        if fast:
            return ChannelsLastGroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


def group_norm(channels: int) -> DecoderGroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, as in every taming-style decoder."""
    if channels % GROUPS:
        raise ValueError(f"GroupNorm({GROUPS}) needs channels divisible by {GROUPS}, got {channels}")
    return DecoderGroupNorm(GROUPS, channels, eps=1e-6)


def set_fast_group_norm(module: nn.Module, on: bool) -> None:
    """Switch the channels_last GroupNorm backward (``DecoderGroupNorm.fast_backward``) in every decoder norm."""
    for m in module.modules():
        if isinstance(m, DecoderGroupNorm):
            m.fast_backward = on


def resize_to_latent_grid(z: torch.Tensor, grid: int) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) map to (B, C, grid, grid); identity when the size already matches."""
    if z.shape[-2:] == (grid, grid):
        return z
    return F.interpolate(z, size=(grid, grid), mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """``x + conv3(SiLU(GN(conv3(SiLU(GN x)))))``, with a 1x1 conv on the skip when the channels change."""

    def __init__(self, c_in: int, c_out: int, first_kernel: int = 3):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, first_kernel, padding=first_kernel // 2)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class PostQuantResBlock(ResBlock):
    """The bridge from the backbone width to the decoder: like a ResBlock, but its first conv is 1x1 (docs/method.md §2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, first_kernel=1)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a (B, C, H, W) map, with GroupNorm and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
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

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attn: bool, upsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks))
        self.attns = nn.ModuleList(AttnBlock(c_out) for _ in range(n_blocks)) if attn else None
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
    """

    def __init__(self, in_channels: int, channels: int, channel_mult: tuple[int, ...], res_blocks: int):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mid = nn.Sequential(ResBlock(widths[0], widths[0]), AttnBlock(widths[0]), ResBlock(widths[0], widths[0]))
        c_in, levels = widths[0], []
        for i, c_out in enumerate(widths):
            last = i == len(widths) - 1
            levels.append(DecoderLevel(c_in, c_out, res_blocks + 1, attn=i == 0, upsample=not last))
            c_in = c_out
        self.levels = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in)
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
