"""Optimizers and learning-rate schedules of the released recipe (docs/method.md §4).

AdamW for the tokenizer with weight decay only on weight matrices (no decay on biases, norms and other
1-d parameters), Adam for the discriminator, both on a linear-warmup + cosine schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float, no_decay: tuple[str, ...] = ()) -> list[dict]:
    """Two parameter groups: matrices (ndim >= 2) with weight decay, everything else without.

    ``no_decay``: name fragments of matrices to leave undecayed too (the teacher's "pos_embed", "latent").
    """
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        matrix = p.ndim >= 2 and not name.endswith(".bias") and not any(part in name for part in no_decay)
        (decay if matrix else plain).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_adamw(
    model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, fused: bool = False
) -> torch.optim.AdamW:
    """The tokenizer's optimizer (paper: lr 7.2e-5, betas (0.5, 0.9), eps 1e-8, weight decay 1e-4).

    ``fused``: torch's fused AdamW kernel (the same update in one pass per tensor, CPU and CUDA) instead of the
    per-tensor loop of small ops.
    """
    groups = decay_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: the stage froze everything")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def build_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine as a LambdaLR stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio)
    )
