"""The forward pass's numerics: bf16 autocast, and on the CPU the plain (math) attention kernel beside it.

    with precision_context("cpu", bf16=True):
        loss = model(batch)            # matmuls in bf16; weights, optimizer and loss stay fp32

Both trainers use it (training/steps.py for the tokenizer, unified/fit.py for the unified model). With
bf16 on the CPU the math attention kernel is chosen because the CPU flash-attention kernel's bf16 backward is
2-20x slower at these sizes (benchmarks/step_speed.py); fp32 keeps the
default kernels unless ``math_attention`` asks otherwise.

bf16 pays only where the hardware computes it: a CUDA GPU, or a CPU whose oneDNN has bf16 kernels (AVX-512, AMX).
On a CPU with AVX2 alone oneDNN emulates bf16, and a tiny training step took 26 s against 2.6 s in fp32 (one
thread, batch 32). ``resolve_bf16`` is how every trainer decides: bf16 where asked and native, fp32 otherwise, with
the reason to print.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 in hardware: CUDA with bf16 support, or a CPU with oneDNN bf16 kernels."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(supported()) if supported is not None else False
    return False


def resolve_bf16(asked: bool | None, device_type: str) -> tuple[bool, str | None]:
    """The precision a run computes in: (bf16 or not, the reason when a request for bf16 was not granted).

    ``asked``: True = bf16 autocast, False = fp32, None = bf16 on CUDA only. bf16 is granted where the device
    computes it natively (``native_bf16``); elsewhere the run is fp32 and the note says why.
    """
    wanted = asked if asked is not None else device_type == "cuda"
    if wanted and not native_bf16(device_type):
        where = ("this CPU has no bf16 kernels in oneDNN (they need AVX-512 or AMX; emulated, a step is about 10x "
                 "slower than in fp32)") if device_type == "cpu" else f"this {device_type} device has no bf16 support"
        return False, f"bf16 autocast asked for, but {where}: computing in fp32"
    return wanted, None


def precision_context(device_type: str, bf16: bool, math_attention: bool | None = None) -> ExitStack:
    """bf16 autocast when ``bf16``; the math attention kernel when ``math_attention`` (default: bf16 on the CPU)."""
    stack = ExitStack()
    if bf16:
        stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
    if (bf16 and device_type == "cpu") if math_attention is None else math_attention:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack
