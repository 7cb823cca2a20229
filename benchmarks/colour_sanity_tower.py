"""Colour sanity check: a frozen tower -> pixel projection -> continuous z -> post-quant projection -> decoder,
trained on MSE alone (no quantizer, no semantic loss); PSNR / luma / chroma on eval images 0-255.

    python benchmarks/colour_sanity_tower.py PRE GROUPS STEPS TOWER TAP [POST]
      PRE     attn (the paper's AttnProjection) | linear (one Linear C -> d) | lnlinear (LayerNorm + Linear)
      GROUPS  decoder GroupNorm groups (32 = the paper's; an instance norm on tiny's 32-channel levels)
      TOWER   teacher (the shipped tiny SigLIP's image tower) | classifier (the shape classifier) | random
      TAP     pixel tap: 0 = patch embedding, k = block k (with a 0.6 x block-1 shortcut when k > 1)
      POST    attn (default, the paper's causal AttnProjection) | linear (one Linear d -> C)

Batches of 16 fresh training images, AdamW 1e-3, one thread. docs/tiny_recipe.md quotes its results.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from dualtoken_lite import DualToken, model_preset
from dualtoken_lite.evaluation.metrics import luma_chroma_psnr, psnr
from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, make_batch, to_tensor
from dualtoken_lite.tinyworld.shape_classifier import load_shape_classifier
from dualtoken_lite.tinyworld.teacher import load_teacher


class LinearProjection(nn.Module):
    """A plain width change (optionally after a LayerNorm): the control for the AttnProjection."""

    def __init__(self, c_in: int, c_out: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(c_in) if norm else nn.Identity()
        self.lin = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.norm(x))


def main() -> None:
    pre, groups, steps, tower, tap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    post = sys.argv[6] if len(sys.argv) > 6 else "attn"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    cfg.decoder_norm_groups, cfg.pixel_bypass, cfg.semantic_layer = groups, True, None
    cfg.pixel_layer, cfg.shortcut_layer = tap, (1 if tap > 1 else None)
    model = DualToken(cfg)
    if tower == "teacher":
        model.encoder.trunk.load_state_dict(load_teacher().trunk.state_dict())
    elif tower == "classifier":
        model.encoder.trunk.load_state_dict(load_shape_classifier()[0].state_dict())
    model.encoder.requires_grad_(False)
    C, d = cfg.backbone.width, cfg.pixel_quantizer.code_dim
    if pre in ("linear", "lnlinear"):
        model.pixel_proj = LinearProjection(C, d, norm=pre == "lnlinear")
        model.shortcut_proj = LinearProjection(C, d, norm=pre == "lnlinear")
    if post == "linear":
        model.pixel_post_proj = LinearProjection(d, C, norm=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.99))
    images = to_tensor(make_batch(0, steps * 16, "train")[0])  # (steps * 16, 3, 64, 64)
    start = time.time()
    for step in range(steps):
        x = images[step * 16 : (step + 1) * 16]
        loss = torch.nn.functional.mse_loss(model(x).reconstruction, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x_eval = to_tensor(load_split(ensure_tinyworld(splits=("eval",))["eval"])[0][:256])
    with torch.no_grad():
        x_hat = model.eval()(x_eval).reconstruction
    luma, chroma = luma_chroma_psnr(x_hat, x_eval)
    print(pre, groups, steps, tower, tap, post, f"psnr {psnr(x_hat, x_eval).mean():.2f} luma {luma.mean():.2f} "
          f"chroma {chroma.mean():.2f}", f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
