"""Luma and chroma PSNR equal a hand computation (BT.601 full range on [0, 1] RGB), per image."""

import numpy as np
import torch

from dualtoken_lite.evaluation.metrics import luma_chroma_psnr, psnr


def hand(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """One image pair (h, w, 3) in [0, 1] -> (luma PSNR, chroma PSNR), written out from the definitions."""
    def ycc(x):
        y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
        return y, 0.5 + 0.564 * (x[..., 2] - y), 0.5 + 0.713 * (x[..., 0] - y)

    (ya, cba, cra), (yb, cbb, crb) = ycc(a), ycc(b)
    mse_y = np.mean((ya - yb) ** 2)
    mse_c = np.mean(((cba - cbb) ** 2 + (cra - crb) ** 2) / 2)
    return 10 * np.log10(1 / mse_y), 10 * np.log10(1 / mse_c)


def test_luma_and_chroma_psnr_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    x_hat = (x + 0.2 * torch.randn(3, 3, 16, 16, generator=g)).clamp(-1, 1)
    luma, chroma = luma_chroma_psnr(x_hat, x)
    for i in range(3):
        a, b = ((t[i].permute(1, 2, 0).double().numpy() + 1) / 2 for t in (x_hat, x))
        want_y, want_c = hand(a, b)
        assert abs(luma[i].item() - want_y) < 1e-4 and abs(chroma[i].item() - want_c) < 1e-4


def test_grey_reconstruction_keeps_luma_and_loses_chroma():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # the luma as a grey image
    grey = y.expand(-1, 3, -1, -1)
    luma, chroma = luma_chroma_psnr(grey, x)
    assert (luma > 60).all() and (chroma < luma).all() and (psnr(grey, x) < luma).all()
