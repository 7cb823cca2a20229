"""GroupNorm for the decoder's channels_last maps, with a fast closed-form backward on the CPU.

The decoder's convolutions run channels_last (the layout CPU convolutions are fastest in), and PyTorch's CPU
GroupNorm backward is 10-15x slower in that layout than in NCHW, and 2-4x slower than the closed form below
(benchmarks/step_speed.py). ``DecoderGroupNorm`` has nn.GroupNorm's parameters and state dict; with
``fast_backward`` on (``TrainConfig.fast_group_norm``) it takes the closed-form backward: same outputs, gradients
equal up to float rounding (tests/test_decoder.py).
"""

from __future__ import annotations

import torch
from torch import nn


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


def set_fast_group_norm(module: nn.Module, on: bool) -> None:
    """Switch the channels_last GroupNorm backward (``DecoderGroupNorm.fast_backward``) in every decoder norm."""
    for m in module.modules():
        if isinstance(m, DecoderGroupNorm):
            m.fast_backward = on
