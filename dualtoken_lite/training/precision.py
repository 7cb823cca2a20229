"""The forward pass's numerics: bf16 autocast, and on the CPU the plain (math) attention kernel beside it.

    with precision_context("cpu", bf16=True):
        loss = model(batch)            # matmuls in bf16; weights, optimizer and loss stay fp32

Both trainers use it (training/steps.py for the tokenizer, unified/fit.py for the readers and generators). With
bf16 on the CPU the math attention kernel is chosen because the CPU flash-attention kernel's bf16 backward is
2-20x slower at these sizes (benchmarks/step_speed.py, benchmarks/generator_step_speed.py); fp32 keeps the
default kernels unless ``math_attention`` asks otherwise.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def precision_context(device_type: str, bf16: bool, math_attention: bool | None = None) -> ExitStack:
    """bf16 autocast when ``bf16``; the math attention kernel when ``math_attention`` (default: bf16 on the CPU)."""
    stack = ExitStack()
    if bf16:
        stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
    if (bf16 and device_type == "cpu") if math_attention is None else math_attention:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack
