"""fp32 Linear layers on the CPU through oneDNN's convolution kernels instead of the BLAS sgemm.

PyTorch runs an fp32 ``F.linear`` on the CPU through its BLAS (MKL), whose sgemm takes AVX2 code on AMD CPUs; its
convolutions run through oneDNN, which uses AVX-512 on any x86 CPU that has it. A Linear layer is a 1 x 1
convolution, so the same product can be asked of oneDNN: the M rows of x (..., C) are laid out as 16 channels_last
images of M / 16 x 1 pixels, (16, C, M / 16, 1), a view without a copy (16 images: PyTorch hands one-thread 1 x 1
convolutions to oneDNN from a batch of 16). On the project's AMD EPYC CPU this doubles the rate of every
tower and projection matmul, forward and backward (benchmarks/step_speed.py); on an Intel Xeon, where MKL's
sgemm runs AVX-512 itself, it gains nothing at fp32 (README, Benchmarks). The products are the same; they are
summed in another order, so results agree up to float rounding (tests/test_speed_levers.py).

Only fp32 outside autocast takes this path: under bf16 autocast PyTorch's matmul already runs on oneDNN, and there
the plain ``F.linear`` is the faster one. Anything else (GPU tensors, row counts not divisible by 16) stays on
``F.linear``.

    use_onednn_linear(model, True)   # every nn.Linear in model becomes a OneDNNLinear (same parameters, state dict)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGES = 16  # rows are split into this many "images": PyTorch's one-thread oneDNN path for 1 x 1 kernels needs 16


def takes_onednn_path(x: Tensor) -> bool:
    """Whether ``linear`` computes x's product as a convolution: fp32 on the CPU, no autocast, rows divisible by 16."""
    rows = x.numel() // max(x.shape[-1], 1)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and rows >= IMAGES and rows % IMAGES == 0)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., C_in), weight (C_out, C_in) -> (..., C_out), via oneDNN when it can."""
    if not takes_onednn_path(x):
        return F.linear(x, weight, bias)
    lead, c_in = x.shape[:-1], x.shape[-1]
    images = x.reshape(IMAGES, -1, 1, c_in).permute(0, 3, 1, 2)  # (16, C_in, M / 16, 1), channels_last
    y = F.conv2d(images, weight[:, :, None, None], bias)  # (16, C_out, M / 16, 1), channels_last
    return y.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])  # (..., C_out), a view of y's memory


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward is ``linear``: oneDNN for fp32 on the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def linear_of(layer: nn.Linear):
    """The function a layer's product goes through (``linear`` for a OneDNNLinear), for callers passing own bias."""
    return linear if isinstance(layer, OneDNNLinear) else F.linear


def use_onednn_linear(module: nn.Module, on: bool) -> None:
    """Switch every nn.Linear inside ``module`` to OneDNNLinear (on) or back to nn.Linear (off), in place."""
    for m in module.modules():
        if type(m) in (nn.Linear, OneDNNLinear):
            m.__class__ = OneDNNLinear if on else nn.Linear
