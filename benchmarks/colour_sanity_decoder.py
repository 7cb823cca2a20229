"""Colour sanity check of the decoder side alone: z = a fixed random projection of each 8 x 8 patch's pixels (so it
certainly holds the colour) -> post-quant projection -> decoder, trained on MSE; PSNR / luma / chroma on eval 0-255.

    python benchmarks/colour_sanity_decoder.py GROUPS STEPS
GROUPS: the decoder's GroupNorm groups (32 = the paper's: one channel per group on tiny's 32-channel levels).
"""

from __future__ import annotations

import sys

import torch

from dualtoken_lite import DualToken, model_preset
from dualtoken_lite.evaluation.metrics import luma_chroma_psnr, psnr
from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, make_batch, to_tensor


def patches(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) -> (B, 64, 192): each 8 x 8 patch's pixels, raster order."""
    return x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], 64, 192)


def main() -> None:
    groups, steps = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    cfg.decoder_norm_groups = groups
    model = DualToken(cfg)
    proj = torch.randn(192, 32) / 192**0.5  # fixed: z holds the pixels, randomly mixed

    def z_of(x: torch.Tensor) -> torch.Tensor:
        return (patches(x) @ proj).reshape(-1, 8, 8, 32)  # (B, H, W, d)

    params = [*model.pixel_post_proj.parameters(), *model.post_quant_block.parameters(), *model.decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99))
    images = to_tensor(make_batch(0, steps * 16, "train")[0])
    for step in range(steps):
        x = images[step * 16 : (step + 1) * 16]
        loss = torch.nn.functional.mse_loss(model.decode_quantized(z_of(x)), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x_eval = to_tensor(load_split(ensure_tinyworld(splits=("eval",))["eval"])[0][:256])
    with torch.no_grad():
        x_hat = model.decode_quantized(z_of(x_eval))
    luma, chroma = luma_chroma_psnr(x_hat, x_eval)
    print(groups, steps, f"psnr {psnr(x_hat, x_eval).mean():.2f} luma {luma.mean():.2f} chroma {chroma.mean():.2f}")


if __name__ == "__main__":
    main()
