"""Reconstruct images through the tokenizer and show their token maps: ``python -m dualtoken_lite reconstruct``.

    python -m dualtoken_lite reconstruct runs/tiny cat.jpg logo.png photos/ --out recon/ --upscale 4

For each input image NAME (any PIL mode and size: resized and center-cropped as in docs/method.md §5's eval transform):

    recon/NAME_original.png   the model's input: the resized, cropped image (h x w)
    recon/NAME_recon.png      model.decode(model.encode(image)[0]): what the pixel codes alone give back
    recon/NAME_tokens.png     the first-depth code maps as coloured H x W grids, pixel | semantic
                              (one colour per code id; the coarsest depth says the most about the layout)
    recon/NAME_compare.png    original | reconstruction | pixel codes | semantic codes, side by side

and prints its PSNR (dB, RGB in [0, 1], data range 1). A file that cannot be read is reported by name and
skipped; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from dualtoken_lite.datasets.images import preprocess, to_pil
from dualtoken_lite.evaluation.metrics import psnr
from dualtoken_lite.settings import UserError
from dualtoken_lite.tools.common import (
    batched,
    iter_images,
    load_tokenizer,
    output_stem,
    pick_device,
    writable_folder,
)

GOLDEN = 0.6180339887498949  # hue step between consecutive code ids: neighbouring ids get distant colours


def code_colours(codes: Tensor) -> Tensor:
    """Integer codes (H, W) -> uint8 colours (H, W, 3): hue = frac(id * golden ratio), two brightness levels."""
    table = {}
    for code in codes.unique().tolist():
        r, g, b = colorsys.hsv_to_rgb((code * GOLDEN) % 1.0, 0.75, 0.95 if code % 2 else 0.7)
        table[code] = (round(r * 255), round(g * 255), round(b * 255))
    flat = torch.tensor([table[c] for c in codes.flatten().tolist()], dtype=torch.uint8)
    return flat.reshape(*codes.shape, 3)


def code_map_image(codes: Tensor, size: int) -> Image.Image:
    """Codes (H, W) -> a size x size picture, each token a flat coloured cell with a thin dark grid line."""
    H, W = codes.shape
    colours = code_colours(codes)  # (H, W, 3)
    cell = max(1, size // max(H, W))
    image = colours.repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # (H * cell, W * cell, 3)
    if cell >= 4:  # grid lines only when cells are big enough to keep their colour visible
        image[::cell, :, :] = 40
        image[:, ::cell, :] = 40
    return Image.fromarray(image.numpy()).resize((size, size), Image.NEAREST)


def tokens_picture(pixel_codes: Tensor, semantic_codes: Tensor | None, size: int) -> Image.Image:
    """First-depth pixel (and semantic) code maps (H, W, D) side by side, each size x size."""
    maps = [code_map_image(pixel_codes[..., 0], size)]
    if semantic_codes is not None:
        maps.append(code_map_image(semantic_codes[..., 0], size))
    return side_by_side(maps)


def side_by_side(images: list[Image.Image], gap: int = 2, upscale: int = 1) -> Image.Image:
    """Images of one height in a row on a white background, separated by ``gap`` pixels, nearest-upscaled."""
    images = [im.resize((im.width * upscale, im.height * upscale), Image.NEAREST) for im in images]
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


@torch.no_grad()
def reconstruct(model, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """images (B, 3, h, w) in [-1, 1] -> (reconstructions (B, 3, h, w), pixel codes, semantic codes or None)."""
    pixel, semantic = model.encode(images)  # (B, H, W, D) each
    if model.cfg.shared_quantizer:
        semantic = None  # the shared ablation's semantic codes ARE its pixel codes
    return model.decode(pixel), pixel, semantic


def write_outputs(out: Path, stem: str, x: Tensor, x_hat: Tensor, pixel: Tensor, semantic: Tensor | None,
                  upscale: int = 1) -> list[Path]:
    """The four PNGs of one image (module docstring); returns their paths."""
    size = x.shape[-1]
    original, recon = to_pil(x), to_pil(x_hat)
    tokens = tokens_picture(pixel.cpu(), semantic.cpu() if semantic is not None else None, size)
    compare = side_by_side([original, recon, tokens], upscale=upscale)
    paths = [out / f"{stem}_{kind}.png" for kind in ("original", "recon", "tokens", "compare")]
    for image, path in zip((original, recon, tokens, compare), paths):
        image.save(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite reconstruct", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="model folder (save_pretrained) or training run folder")
    parser.add_argument("inputs", nargs="+", help="image files (any mode and size), folders or .tar shards")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--upscale", type=int, default=1, help="nearest-neighbour zoom of NAME_compare.png")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    args = parser.parse_args(argv)
    if args.upscale < 1 or args.batch_size < 1:
        raise UserError(f"--upscale and --batch-size must be >= 1; got {args.upscale} and {args.batch_size}")
    out = writable_folder(args.out)
    model, folder = load_tokenizer(args.checkpoint, pick_device(args.device))
    device, size = next(model.parameters()).device, model.cfg.backbone.image_size
    out.mkdir(parents=True, exist_ok=True)
    taken, done, failed = set(), 0, []
    for chunk in batched(iter_images(args.inputs), args.batch_size):
        for name, error in ((n, im) for n, im in chunk if isinstance(im, Exception)):
            print(f"skipped {name}: {error}", file=sys.stderr)
            failed.append(name)
        good = [(n, im) for n, im in chunk if not isinstance(im, Exception)]
        if not good:
            continue
        x = torch.stack([preprocess(im, size) for _, im in good]).to(device)  # (b, 3, h, w)
        x_hat, pixel, semantic = reconstruct(model, x)
        values = psnr(x_hat, x).tolist()
        for i, (name, _) in enumerate(good):
            stem = output_stem(name, taken)
            write_outputs(out, stem, x[i], x_hat[i], pixel[i], semantic[i] if semantic is not None else None,
                          args.upscale)
            print(f"{name} -> {out / stem}_*.png  PSNR {values[i]:.2f} dB")
        done += len(good)
    print(f"{done} images reconstructed with {folder}, {len(failed)} skipped -> {out}/")
    return 1 if failed or not done else 0


if __name__ == "__main__":
    sys.exit(main())
