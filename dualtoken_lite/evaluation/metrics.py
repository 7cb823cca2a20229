"""Numbers that say how good a tokenizer is (docs/method.md §6): PSNR (RGB, luma, chroma), SSIM, codebook usage.

Conventions, stated once: PSNR and SSIM are computed on RGB in [0, 1] with data_range = 1 (some papers use 2.0 for
SSIM on [-1, 1] images: their SSIM is not comparable), per image, then averaged over images. Codebook
utilisation = distinct codes used / K over the whole evaluated set; perplexity = exp(entropy of the code histogram),
per branch and per residual depth.
"""

from __future__ import annotations

import torch

from dualtoken_lite.datasets.images import to_unit

# torchmetrics is imported inside psnr and ssim, where it is used: importing any part of it loads all its metrics
# (text, audio, image: transformers, torchvision), 1-2 s of every training command's start on a 2-core CPU,
# paid even by runs that never evaluate (tests/test_structure.py checks that the trainer starts without it).


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,), of images in [-1, 1], measured in [0, 1] with data_range 1."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        to_unit(reconstruction), to_unit(original), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, (B,), of images in [-1, 1], measured in [0, 1] with data_range 1 (Gaussian 11x11)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(
        to_unit(reconstruction), to_unit(original), data_range=1.0, reduction="none"
    )


def ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) in [-1, 1] -> BT.601 full-range Y, Cb, Cr of the [0, 1] RGB image, (B, 3, h, w).

    Y = .299 R + .587 G + .114 B,  Cb = .5 + .564 (B - Y),  Cr = .5 + .713 (R - Y).
    """
    rgb = to_unit(x)  # (B, 3, h, w) in [0, 1]
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.5 + 0.564 * (b - y), 0.5 + 0.713 * (r - y)], dim=1)


def luma_chroma_psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB, data range 1) of luma Y and of chroma, (B,) each, for images in [-1, 1].

    Chroma PSNR uses the mean of (dCb^2 + dCr^2) / 2 over the image: grey reconstructions of colourful images
    score low here even when their luma (and so their shapes) is right.
    """
    a, b = ycbcr(reconstruction), ycbcr(original)  # (B, 3, h, w)
    se = (a - b).double() ** 2
    mse_y = se[:, 0].mean(dim=(1, 2))  # (B,)
    mse_c = se[:, 1:].mean(dim=(1, 2, 3))  # (B,): the mean of dCb^2 and dCr^2
    to_db = lambda mse: 10 * torch.log10(1.0 / mse.clamp_min(1e-12))  # noqa: E731
    return to_db(mse_y).float(), to_db(mse_c).float()


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
