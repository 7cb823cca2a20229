"""The README's picture: held-out tiny-world images (top) and a tokenizer's reconstructions from its pixel codes.

    .venv/bin/python benchmarks/readme_picture.py data/tokenizer --out docs/demo_reconstructions.png
"""

from __future__ import annotations

import argparse

import torch

from dualtoken_lite import DualToken
from dualtoken_lite.datasets.images import save_image
from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, to_tensor
from dualtoken_lite.training.logs import reconstruction_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a save_pretrained folder")
    parser.add_argument("--out", default="docs/demo_reconstructions.png")
    parser.add_argument("--images", type=int, default=10, help="the first N images of the eval shard")
    args = parser.parse_args()
    model = DualToken.from_pretrained(args.model).eval()
    x = to_tensor(load_split(ensure_tinyworld(splits=("eval",))["eval"])[0][: args.images])  # (N, 3, 64, 64)
    with torch.no_grad():
        x_hat = model.decode(model.encode(x)[0])  # through the codes, as a language model would use them
    save_image(reconstruction_grid(x, x_hat, max_images=args.images), args.out, upscale=3)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
