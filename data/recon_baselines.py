"""Reconstruction baselines on the committed eval shard: PSNR (RGB in [0, 1], data range 1) per background.

Run from the repository root: ``python data/recon_baselines.py`` (prints the tables in data/README.md).
"""

import collections
import io

import numpy as np
from PIL import Image

from dualtoken_lite import tinyworld as tw

COLUMNS = ("down/up x2", "down/up x4", "down/up x8", "JPEG q50")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images, on [0, 1] with data range 1."""
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))


def resample(image: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic down by ``factor`` and back up: what a grid of (64 / factor)^2 RGB values keeps."""
    small = Image.fromarray(image).resize((64 // factor, 64 // factor), Image.BICUBIC, reducing_gap=None)
    return np.asarray(small.resize((64, 64), Image.BICUBIC))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A round trip through Pillow's JPEG encoder."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def main() -> None:
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    shard_images, _ = tw.load_split(tw.ensure_tinyworld(splits=("eval",))["eval"])  # the committed eval shard
    for i, image in enumerate(shard_images):
        drawn, meta = tw.make_sample(i, "eval")  # the shard holds sample i of the eval split; its metadata
        assert np.array_equal(drawn, image), f"eval shard sample {i} differs from the generator's"
        for kind in (meta["background"], "all"):
            for factor, column in zip((2, 4, 8), COLUMNS):
                rows[kind][column].append(psnr(image, resample(image, factor)))
            rows[kind][COLUMNS[3]].append(psnr(image, jpeg(image, 50)))
    print("| background | n | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for kind in (*tw.BACKGROUNDS, "all"):
        cells = " | ".join(f"{np.mean(rows[kind][c]):.1f}" for c in COLUMNS)
        print(f"| {kind} | {len(rows[kind][COLUMNS[0]])} | {cells} |")
    thumbnails(shard_images[:512])


def thumbnails(images: np.ndarray) -> None:
    """PSNR / luma / chroma of the 8 x 8 and 16 x 16 bicubic thumbnails, through the evaluation's own metric
    functions (dualtoken_lite.evaluation.metrics), so the figures compare with a tokenizer's summary.json."""
    from dualtoken_lite.evaluation.metrics import luma_chroma_psnr
    from dualtoken_lite.evaluation.metrics import psnr as psnr_batch

    x = tw.to_tensor(images)  # (B, 3, 64, 64) in [-1, 1]
    print(f"\n| thumbnail (images 0-{len(images) - 1}) | PSNR | luma | chroma |\n|---|---|---|---|")
    for factor in (8, 4):
        x_hat = tw.to_tensor(np.stack([resample(image, factor) for image in images]))
        luma, chroma = luma_chroma_psnr(x_hat, x)
        side = 64 // factor
        print(f"| bicubic {side} x {side} | {psnr_batch(x_hat, x).mean():.2f} | {luma.mean():.2f} | {chroma.mean():.2f} |")


if __name__ == "__main__":
    main()
