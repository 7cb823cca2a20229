"""Numbers that say how good a tokenizer is (docs/method.md §6): PSNR, SSIM, codebook usage, semantic accuracy.

Conventions, stated once: PSNR and SSIM are computed on RGB in [0, 1] with data_range = 1 (some papers use 2.0 for
SSIM on [-1, 1] images: their SSIM is not comparable), per image, then averaged over images. Codebook
utilisation = distinct codes used / K over the whole evaluated set; perplexity = exp(entropy of the code histogram),
per branch and per residual depth.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from dualtoken_lite.datasets.images import to_unit


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,), of images in [-1, 1], measured in [0, 1] with data_range 1."""
    return peak_signal_noise_ratio(
        to_unit(reconstruction), to_unit(original), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, (B,), of images in [-1, 1], measured in [0, 1] with data_range 1 (Gaussian 11x11)."""
    return structural_similarity_index_measure(
        to_unit(reconstruction), to_unit(original), data_range=1.0, reduction="none"
    )


class CodeUsage:
    """Histogram of the codes one quantizer emits over a whole data set, per residual depth."""

    def __init__(self, codebook_size: int, depth: int):
        self.codebook_size = codebook_size
        self.counts = torch.zeros(depth, codebook_size, dtype=torch.float64)  # (D, K)

    def update(self, codes: torch.Tensor) -> None:
        """Add codes of shape (..., D)."""
        flat = codes.reshape(-1, codes.shape[-1]).cpu()  # (M, D)
        for d in range(flat.shape[1]):
            self.counts[d] += torch.bincount(flat[:, d], minlength=self.codebook_size).double()

    def utilisation(self) -> torch.Tensor:
        """(D,) fraction of the K codes used at least once at each depth."""
        return (self.counts > 0).double().mean(dim=1)

    def perplexity(self) -> torch.Tensor:
        """(D,) exp(entropy) of each depth's code histogram: K if all codes are equally used, 1 if one is."""
        p = self.counts / self.counts.sum(dim=1, keepdim=True).clamp_min(1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=1)
        return entropy.exp()

    def summary(self) -> dict[str, list[float]]:
        return {
            "utilisation": [round(v, 4) for v in self.utilisation().tolist()],
            "perplexity": [round(v, 2) for v in self.perplexity().tolist()],
        }
