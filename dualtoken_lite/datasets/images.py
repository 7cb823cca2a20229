"""Image pre- and post-processing: anything image-like in, a (3, h, w) float tensor in [-1, 1] out (docs/method.md §5).

(Slightly over ~300 lines: most of it is the table of accepted image modes and layouts, kept beside its code.)

DualToken works on RGB in [-1, 1] (``Normalize(mean=0.5, std=0.5)``; docs/method.md §3). The transforms of docs/method.md §5:

    train   RandomResizedCrop(size, scale=(0.9, 1.0), bicubic)          -> [-1, 1]
    eval    resize the shorter side to ``size`` (bicubic), center crop   -> [-1, 1]

Inputs accepted by ``preprocess`` / the transforms:
    PIL images of any mode, converted to RGB by ``to_rgb``:
        RGB, L, 1, P, CMYK, YCbCr, HSV, LAB, RGBX   through PIL's own ``convert("RGB")``;
        RGBA, LA, PA, RGBa, La, P with transparency composited on a WHITE background (the default,
            as img2dataset does for web crawls: transparent logos and drawings are meant for white pages);
            pass ``background=(0, 0, 0)`` for black;
        I;16 (and I;16B/L/N)   16-bit grey, scaled 0..65535 -> 0..255 (PIL itself would clip, not scale);
        I                      32-bit integer grey: scaled as 16-bit when its maximum exceeds 255, else 8-bit;
        F                      float grey: taken as [0, 1] when its maximum is <= 1, else as [0, 255] (clipped).
    tensors / numpy arrays (one image): uint8 in [0, 255] or float in [0, 1]; (h, w), (c, h, w) or
        (h, w, c) with c in 1..4 (grey, grey+alpha, RGB, RGBA). An ambiguous layout (e.g. 3 x 3 x 3) is read as
        CHW for torch tensors and HWC for numpy arrays, the usual convention of each library.

Resizing runs through ``torchvision.transforms.v2.functional`` on the PIL image (PIL's bicubic filter, which
antialiases) or on the float tensor (bicubic, antialias=True); bicubic overshoot is clamped.
EXIF orientation is not applied, as in the released pipeline.

``load_image`` decodes a file fully and raises ``BadImageError`` naming the file when it cannot: corrupt,
truncated, not an image, or larger than ``max_pixels`` (PIL's ``MAX_IMAGE_PIXELS`` by default; a decompression
bomb). The data loaders catch ``BadImageError`` to skip and count such samples.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

WHITE = (255, 255, 255)
BICUBIC = InterpolationMode.BICUBIC
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImageError(ValueError):
    """An image could not be decoded (corrupt, truncated, not an image, or a decompression bomb)."""

    def __init__(self, name: str, reason: str, kind: str = "decode"):
        super().__init__(f"cannot decode image {name!r}: {reason}")
        self.name = name  # the file or sample that failed
        self.kind = kind  # "decode" (corrupt, truncated, not an image) or "bomb" (too many pixels)


# ---------------------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = -1) -> Image.Image:
    """Decode encoded image bytes fully into an RGB PIL image; ``BadImageError`` naming ``name`` if impossible."""
    return _decode(io.BytesIO(data), name, max_pixels)


def load_image(path: str | os.PathLike, max_pixels: int | None = -1) -> Image.Image:
    """Open and fully decode an image file into RGB; ``BadImageError`` naming the file if it can't be decoded.

    max_pixels: images with more pixels are refused as decompression bombs; -1 = PIL's ``MAX_IMAGE_PIXELS``,
    None = no limit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist (check the path)")
    with open(path, "rb") as f:
        return _decode(f, path, max_pixels)


def _decode(fileobj, name: str, max_pixels: int | None) -> Image.Image:
    """Open lazily (header only), refuse bombs before decoding, then decode every pixel and convert to RGB."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels == -1 else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL warns between 1x and 2x limit
            image = Image.open(fileobj)
            w, h = image.size
            if limit is not None and w * h > limit:
                raise BadImageError(name, f"{w}x{h} = {w * h} pixels exceeds the limit of {limit}", "bomb")
            image.load()  # decodes everything: a truncated file fails here, not later inside a transform
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(name, str(e), "bomb") from e
    except BadImageError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise BadImageError(name, f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------------------
# Any PIL mode -> RGB


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert a PIL image of any mode to RGB (alpha composited on ``background``, high bit depths scaled)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        return _grey_to_rgb(_rescale_integer_grey(np.asarray(image), mode))
    if mode == "F":
        return _grey_to_rgb(_rescale_float_grey(np.asarray(image, dtype=np.float32)))
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return composite_on(image, background)
    return image.convert("RGB")


def composite_on(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Alpha-composite an image with transparency over a solid background colour and drop the alpha."""
    rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _rescale_integer_grey(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit grey (I;16*, or I with values above 255) -> uint8 by x / 257; I within 0..255 is kept as 8-bit."""
    a = a.astype(np.int64)
    if mode == "I" and a.size and a.max() <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    return np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)


def _rescale_float_grey(a: np.ndarray) -> np.ndarray:
    """Float grey -> uint8: [0, 1] data when its maximum is <= 1, else [0, 255] data (clipped)."""
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
    return np.round(np.clip(a * scale, 0, 255)).astype(np.uint8)


def _grey_to_rgb(a: np.ndarray) -> Image.Image:
    """(h, w) uint8 grey -> RGB PIL image."""
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


# ---------------------------------------------------------------------------------------------------------
# Tensors / arrays -> float (3, h, w) in [0, 1]


def tensor_to_unit_rgb(x: torch.Tensor | np.ndarray, background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """One uint8 / float image tensor or array of any layout -> float (3, h, w) in [0, 1]."""
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.array(x)) if is_numpy else x  # a copy: arrays of PIL images are read-only
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        lo, hi = (t.min().item(), t.max().item()) if t.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"float image values must lie in [0, 1]; got [{lo:.4g}, {hi:.4g}]. "
                             "Pass uint8 [0, 255] data, or map your data to [0, 1] first "
                             "((x + 1) / 2 for data already in [-1, 1]).")
        t = t.float().clamp(0, 1)
    else:
        raise ValueError(f"image tensor dtype {t.dtype} is not supported; use uint8 [0, 255] or float [0, 1]")
    t = _to_chw(t, prefer_hwc=is_numpy)  # (c, h, w), c in 1..4
    c = t.shape[0]
    if c in (2, 4):  # colour + alpha: composite on the background, as for PIL images
        alpha, t = t[-1:], t[:-1]
        bg = torch.tensor(background, dtype=t.dtype).view(3, 1, 1)[: t.shape[0]] / 255.0
        t = t * alpha + bg * (1 - alpha) if c == 4 else t * alpha + bg[:1] * (1 - alpha)
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t


def _to_chw(t: torch.Tensor, prefer_hwc: bool) -> torch.Tensor:
    """(h, w) / (c, h, w) / (h, w, c) with c in 1..4 -> (c, h, w)."""
    if t.ndim == 2:
        return t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"expected one image of shape (h, w), (c, h, w) or (h, w, c); got {tuple(t.shape)}. "
                         "Preprocess a batch one image at a time.")
    chw, hwc = t.shape[0] in (1, 2, 3, 4), t.shape[-1] in (1, 2, 3, 4)
    if chw and hwc:
        chw = not prefer_hwc  # ambiguous: numpy arrays are HWC by convention, torch tensors CHW
    if chw:
        return t
    if hwc:
        return t.permute(2, 0, 1)
    raise ValueError(f"cannot find a channel axis of size 1..4 in image shape {tuple(t.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Transforms (docs/method.md §5)

ImageLike = Image.Image | torch.Tensor | np.ndarray


def as_rgb(image: ImageLike, background: tuple[int, int, int] = WHITE) -> Image.Image | torch.Tensor:
    """Any accepted input -> an RGB PIL image, or a float (3, h, w) tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return to_rgb(image, background)
    if isinstance(image, torch.Tensor | np.ndarray):
        return tensor_to_unit_rgb(image, background)
    raise TypeError(f"expected a PIL image, torch tensor or numpy array; got {type(image).__name__}")


def normalize(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """RGB PIL or float [0, 1] tensor -> float (3, h, w) in [-1, 1]: x * 2 - 1 = Normalize(0.5, 0.5)."""
    t = TF.pil_to_tensor(image).float() / 255.0 if isinstance(image, Image.Image) else image.clamp(0, 1)
    return TF.normalize(t, mean=[0.5] * 3, std=[0.5] * 3)


def resize_center_crop(image, size: int):
    """Eval geometry: shorter side -> size (bicubic), then the central size x size square."""
    image = TF.resize(image, [size], interpolation=BICUBIC, antialias=True)
    return TF.center_crop(image, [size, size])


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.9, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, height, width), drawn from an explicit numpy RNG."""
    area, log_ratio = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: the central crop at the nearest allowed aspect ratio
    cw, ch = (w, round(w / ratio[0])) if in_ratio < ratio[0] else \
        (round(h * ratio[1]), h) if in_ratio > ratio[1] else (w, h)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class EvalTransform:
    """Eval transform of docs/method.md §5: shorter side to ``size`` (bicubic), center crop -> (3, size, size) in [-1, 1]."""

    def __init__(self, size: int, background: tuple[int, int, int] = WHITE):
        self.size = _check_size(size)
        self.background = background  # colour under transparent pixels

    def __call__(self, image: ImageLike, rng: np.random.Generator | None = None) -> torch.Tensor:
        return normalize(resize_center_crop(as_rgb(image, self.background), self.size))


class TrainTransform:
    """Train transform of docs/method.md §5: RandomResizedCrop(size, scale, bicubic) -> (3, size, size) in [-1, 1].

    ``rng`` (a numpy Generator) makes the crop reproducible per sample; without one it is drawn from torch's
    global RNG, so ``torch.manual_seed`` controls it.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.9, 1.0),
                 background: tuple[int, int, int] = WHITE):
        self.size = _check_size(size)
        self.scale = scale  # fraction of the image area kept by the crop (docs/method.md §5: 0.9-1.0)
        self.background = background  # colour under transparent pixels

    def __call__(self, image: ImageLike, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = as_rgb(image, self.background)
        w, h = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])
        rng = rng if rng is not None else np.random.default_rng(int(torch.randint(2**62, ()).item()))
        top, left, ch, cw = random_resized_crop_box(h, w, rng, self.scale)
        image = TF.resized_crop(image, top, left, ch, cw, [self.size, self.size], interpolation=BICUBIC,
                                antialias=True)
        return normalize(image)


def build_transform(size: int, train: bool) -> TrainTransform | EvalTransform:
    """The docs/method.md §5 transform for training (random resized crop) or evaluation (resize + center crop)."""
    return TrainTransform(size) if train else EvalTransform(size)


def preprocess(image: ImageLike, size: int | None = None, train: bool = False,
               background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """Any image -> float (3, h, w) in [-1, 1]; with ``size``, the docs/method.md §5 train/eval transform to size x size."""
    if size is None:
        return normalize(as_rgb(image, background))
    transform = TrainTransform(size, background=background) if train else EvalTransform(size, background)
    return transform(image)


def _check_size(size: int) -> int:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive int (e.g. 64 or 384); got {size!r}")
    return size


# ---------------------------------------------------------------------------------------------------------
# Post-processing: [-1, 1] -> pixels


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped), the range PSNR/SSIM are computed in (docs/method.md §6)."""
    return ((x.detach().float() + 1) / 2).clamp(0, 1)


def to_uint8(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(..., 3, h, w) float in [-1, 1] -> uint8 in [0, 255] (rounded, clamped), same shape; with ``channels_last``
    (..., h, w, 3), the layout PIL and PNG files use."""
    out = (to_unit(x) * 255).round().to(torch.uint8)
    return out.movedim(-3, -1) if channels_last else out


def to_pil(x: torch.Tensor) -> Image.Image | list[Image.Image]:
    """(3, h, w) in [-1, 1] -> an RGB PIL image; (B, 3, h, w) -> a list of them."""
    if x.ndim == 4:
        return [to_pil(xi) for xi in x]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"to_pil expects (3, h, w) or (B, 3, h, w) in [-1, 1]; got shape {tuple(x.shape)}")
    return Image.fromarray(to_uint8(x).permute(1, 2, 0).cpu().numpy())


def make_grid_image(images: Sequence[torch.Tensor] | torch.Tensor, nrow: int = 8) -> Image.Image:
    """(B, 3, h, w) in [-1, 1] -> one PIL image with the batch tiled ``nrow`` per row, 2 px white gaps."""
    from torchvision.utils import make_grid

    batch = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
    return to_pil(make_grid(batch.detach().cpu().float().clamp(-1, 1), nrow=nrow, padding=2, pad_value=1.0))


def save_image(image: Image.Image, path: str | os.PathLike, upscale: int = 1) -> Path:
    """Write a PIL image as PNG, nearest-neighbour upscaled so that 64 px images stay readable; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    image.save(path)
    return path
