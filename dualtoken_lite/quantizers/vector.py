"""Vector quantization with a straight-through estimator and a commitment loss (VQ-VAE, docs/method.md §2).

A vector quantizer replaces each feature vector z (d,) by its nearest code e_k of a codebook:

    k = argmin_j ||z - e_j||^2,        q = e_k.

The argmin has no gradient, so training uses the **straight-through estimator**: the forward pass
outputs q, the backward pass copies the gradient of q onto z as if q were z (van den Oord et al. 2017).
A **commitment loss** ``mean((z - sg[q])^2)`` pulls the encoder output towards its code. The codebook
itself gets no gradient: it moves by EMA k-means (``codebook.py``), once per optimizer step.

This module holds the small named pieces the residual quantizer (``residual.py``) reuses, and a
single-level ``VectorQuantizer`` (a residual quantizer of depth 1) that notebook 01 builds up to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualtoken_lite.quantizers.codebook import Codebook, usage_figures


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """Forward value exactly q, gradient d/dz = identity: q + (z - sg[z]) (sg = stop-gradient)."""
    return q + (z - z.detach())


def commitment_loss(z: Tensor, q: Tensor) -> Tensor:
    """mean((z - sg[q])^2): pulls z towards its code; gradient to z only."""
    return (z - q.detach()).pow(2).mean()


class NonFiniteInput(ValueError):
    """The features to quantize hold NaN or inf (in training: the weights before the quantizer have diverged)."""


def check_features(z: Tensor, dim: int) -> None:
    """Raise ValueError unless z is a floating tensor (..., dim) with only finite values."""
    if not torch.is_tensor(z) or not z.is_floating_point():
        raise ValueError(f"expected a floating-point tensor (..., {dim}), got {type(z).__name__} "
                         f"{getattr(z, 'dtype', '')}")
    if z.dim() < 1 or z.shape[-1] != dim:
        raise ValueError(
            f"expected features of shape (..., {dim}), got {tuple(z.shape)} (last dim {z.shape[-1] if z.dim() else None}); "
            "project the features to the quantizer's dim first"
        )
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).sum())
        raise NonFiniteInput(f"input holds {bad} non-finite value(s) (NaN or inf) out of {z.numel()}; check the encoder")


def code_histogram(codes: Tensor, size: int) -> Tensor:
    """How often each of the K codes occurs: codes (M,) -> (K,) float."""
    return torch.bincount(codes.reshape(-1), minlength=size).float()


def usage_stats(codes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Utilisation (distinct codes / K) and perplexity exp(-sum p log p) of the codes (M,) of one depth."""
    return usage_figures(code_histogram(codes, size))


@dataclass
class VQOutput:
    """What a single-level vector quantizer returns."""

    quantized: Tensor  # (..., d) straight-through: forward value = the codes, gradient flows to z
    codes: Tensor  # (...,) long, index of each vector's code
    commitment: Tensor  # scalar, unweighted mean((z - sg[q])^2)
    utilisation: Tensor  # scalar, distinct codes used / K in this batch
    perplexity: Tensor  # scalar, exp(entropy of the code histogram) in this batch


class VectorQuantizer(nn.Module):
    """One codebook, nearest-code lookup, straight-through output, EMA updates via ``update_codebook()``."""

    def __init__(self, dim: int, codebook_size: int, **codebook_options):
        """``codebook_options``: how the codebook looks up and moves (``Codebook``'s arguments: decay, eps,
        dead_code_threshold, cosine, chunk_size)."""
        super().__init__()
        self.dim = dim
        self.codebook = Codebook(codebook_size, dim, **codebook_options)

    def forward(self, z: Tensor) -> VQOutput:
        """z (..., d) -> VQOutput; in training mode the step's EMA statistics are accumulated."""
        check_features(z, self.dim)
        flat = z.reshape(-1, self.dim).float()  # (N, d)
        codes = self.codebook.lookup(flat.detach())  # (N,)
        q = self.codebook.embed[codes]  # (N, d)
        if self.training:
            self.codebook.accumulate(flat, codes)
        utilisation, perplexity = usage_stats(codes, self.codebook.size)
        return VQOutput(
            quantized=straight_through(flat, q).reshape(*z.shape[:-1], self.dim),
            codes=codes.reshape(z.shape[:-1]),
            commitment=commitment_loss(flat, q),
            utilisation=utilisation,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes (...,) -> (..., d), the code vectors."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook.size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook.size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        return self.codebook.embed[codes]

    def update_codebook(self) -> dict[str, float]:
        """Once per optimizer step: EMA k-means update and dead-code restart from the accumulated statistics."""
        return self.codebook.update()
