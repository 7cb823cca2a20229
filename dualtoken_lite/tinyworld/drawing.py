"""The tiny world: a procedural, labelled 64 px image set that stands in for ImageNet (docs/method.md §9).

Each image shows one bold, light shape on a darker background. The *class is the shape* (disc, square, triangle, plus,
star, ring, crescent, heart); everything else is random: the shape's size, position, rotation and aspect,
its colour and fill texture (flat, gradient, stripes, checks), and the background (flat, gradient, soft
stripes, or a crop of one of the CC0 / public-domain photos that scikit-image bundles offline). So pixels
alone say little about the class (a raw-pixel linear probe does poorly) while a ViT that learns shape does
well, which is what the teacher (``tinyworld.teacher``) needs.

Determinism and splits: sample ``i`` of split ``s`` is drawn from its own random number generator (RNG) seeded with
``SeedSequence([seed, split_id(s), i])``, so any sample can be remade alone, and splits never share a seed.
The ``eval`` split also crops its backgrounds from photos that ``train`` never sees.

    images, labels = make_batch(0, 16, "train")      # (B, h, w, 3) uint8, (B,) int64

Writing and reading them as shards: ``tinyworld.shards``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("disc", "square", "triangle", "plus", "star", "ring", "crescent", "heart")
SPLITS = {"train": 0, "eval": 1}  # split name -> stream id mixed into every sample's seed
# Backgrounds of each split come from disjoint photos (scikit-image's bundled files; licences in data/README.md).
PHOTOS = {
    "train": ("astronaut", "coffee", "rocket", "immunohistochemistry", "camera", "coins", "brick"),
    "eval": ("chelsea", "hubble_deep_field", "retina", "clock"),
}
BACKGROUNDS = ("flat", "gradient", "stripes", "photo")
FILLS = ("flat", "gradient", "stripes", "checks")
HUES = ("red", "yellow", "green", "cyan", "blue", "magenta", "grey")  # named bins of the shape's paint colour
GREY_CHROMA = 0.15  # a paint whose mean colour has chroma (max - min of RGB) below this is "grey"


@dataclass
class TinyWorldConfig:
    """How the tiny world draws its images."""

    image_size: int = 64  # (h, w) = (image_size, image_size) pixels
    seed: int = 0  # base seed; with the split id and the sample index it fixes every pixel
    min_radius: float = 0.22  # smallest shape radius as a fraction of image_size
    max_radius: float = 0.42  # largest shape radius as a fraction of image_size
    background_probs: tuple[float, ...] = (0.2, 0.25, 0.2, 0.35)  # P(flat, gradient, stripes, photo)
    fill_probs: tuple[float, ...] = (0.35, 0.25, 0.25, 0.15)  # P(flat, gradient, stripes, checks)
    min_contrast: float = 0.35  # least RGB distance (in [0, 1]) between the shape colour and the background mean
    supersample: int = 4  # the shape mask is drawn this many times larger, then box-filtered (anti-aliasing)
    rotation: float = 1.0  # fraction of a full turn the shape's random rotation spans (0 = upright)
    placement: float = 1.0  # fraction of the free room the shape's centre may wander (0 = centred)
    stretch: float = 0.2  # log aspect ratio drawn from [-stretch, stretch]
    ground_max: float = 0.45  # background values are scaled into [0, ground_max] (a darker ground) ...
    figure_min: float = 0.5  # ... and the shape's into [figure_min, 1]: a light figure (1.0 and 0.0 = any)


def split_id(split: str) -> int:
    """The stream id of a split; an unknown name is an error listing the known ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    return SPLITS[split]


def sample_rng(index: int, split: str, seed: int = 0) -> np.random.Generator:
    """The private RNG of one sample: seeded by (seed, split, index), so splits never overlap."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([seed, split_id(split), index]))


# ---------------------------------------------------------------------------------------------------------
# Shapes: outlines in unit coordinates (radius about 1); holes are cut out by a second outline.
# ---------------------------------------------------------------------------------------------------------


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def _regular(n: int, radius: float = 1.0) -> np.ndarray:
    t = np.arange(n) * 2 * np.pi / n - np.pi / 2
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.arange(2 * points) * np.pi / points - np.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _plus(arm: float = 0.36) -> np.ndarray:
    a, b = arm, 1.0
    return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
                     (-b, a), (-b, -a), (-a, -a)], dtype=float)


def _heart(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y + 3], 1) / 16.0  # image y points down; +3 centres the heart


def shape_outlines(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(outer outline, hole outline or None) of a class, as (n, 2) arrays of unit coordinates."""
    outlines = {
        "disc": (_circle(), None),
        "square": (_regular(4, 1.1) @ _rotation(np.pi / 4).T, None),
        "triangle": (_regular(3, 1.15), None),
        "plus": (_plus(), None),
        "star": (_star(), None),
        "ring": (_circle(), _circle(0.55)),
        "crescent": (_circle(), _circle(0.85, 0.45, -0.1)),
        "heart": (_heart(), None),
    }
    if name not in outlines:
        raise ValueError(f"unknown shape {name!r}; choose one of {CLASSES}")
    return outlines[name]


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def shape_placement(name: str, rng: np.random.Generator, cfg: TinyWorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """A random size, stretch, rotation and position for a shape: (transform (2, 2), centre (2,)) in pixels.

    The outline in unit coordinates maps to ``outline @ transform.T + centre``; sqrt(|det transform|) is the
    shape's radius in pixels (the stretch keeps the area).
    """
    size = cfg.image_size
    radius = rng.uniform(cfg.min_radius, cfg.max_radius) * size
    aspect = np.exp(rng.uniform(-cfg.stretch, cfg.stretch))  # mild stretch: x * aspect, y / aspect
    transform = _rotation(rng.uniform(0, 2 * np.pi * cfg.rotation)) @ np.diag([aspect, 1 / aspect]) * radius
    outer, _ = shape_outlines(name)
    points = outer @ transform.T  # (n, 2) pixels around the centre
    span = (points.max(0) - points.min(0)).max()
    transform = transform * min(1.0, (size - 2) / span)  # shrink a shape that would not fit the frame
    points = outer @ transform.T
    low, high = 1 - points.min(0), size - 1 - points.max(0)  # centres that keep the whole shape in view
    free = (high - low) * cfg.placement
    centre = (low + high - free) / 2 + rng.uniform(0, 1, 2) * free
    return transform, centre


def rasterize(name: str, transform: np.ndarray, centre: np.ndarray, cfg: TinyWorldConfig) -> np.ndarray:
    """The anti-aliased coverage mask (h, w) in [0, 1] of a placed shape (outline, then its hole cut out)."""
    size, ss = cfg.image_size, cfg.supersample
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for outline, value in zip(shape_outlines(name), (255, 0)):
        if outline is not None:
            points = (outline @ transform.T + centre) * ss
            draw.polygon([tuple(p) for p in points], fill=value)
    mask = canvas.resize((size, size), Image.BOX)  # box filter = exact area coverage
    return np.asarray(mask, dtype=np.float32) / 255.0


def shape_mask(name: str, rng: np.random.Generator, cfg: TinyWorldConfig) -> np.ndarray:
    """An anti-aliased coverage mask (h, w) in [0, 1] of one randomly placed, sized, rotated, stretched shape."""
    return rasterize(name, *shape_placement(name, rng, cfg), cfg)


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """Where a coverage mask (h, w) sits: its centre of mass (x, y) as fractions of the width and height."""
    h, w = mask.shape
    y, x = np.mgrid[0:h, 0:w]
    total = mask.sum()
    return float((mask * (x + 0.5)).sum() / total / w), float((mask * (y + 0.5)).sum() / total / h)


# ---------------------------------------------------------------------------------------------------------
# Textures for the background and the shape's fill: smooth, so a tokenizer can reconstruct them.
# ---------------------------------------------------------------------------------------------------------


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear ramp (h, w) in [0, 1] along a random direction."""
    x, y = _coords(size)
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * x + np.sin(a) * y
    return (t - t.min()) / (t.max() - t.min())


def _stripes(rng: np.random.Generator, size: int, period: tuple[float, float]) -> np.ndarray:
    """Sinusoidal stripes (h, w) in [0, 1] with a random angle, period (pixels) and phase."""
    x, y = _coords(size)
    a = rng.uniform(0, np.pi)
    t = (np.cos(a) * x + np.sin(a) * y) / rng.uniform(*period)
    return 0.5 + 0.5 * np.sin(2 * np.pi * t + rng.uniform(0, 2 * np.pi))


def _checks(rng: np.random.Generator, size: int) -> np.ndarray:
    """A softened checkerboard (h, w) in [0, 1] with a random cell size and angle."""
    x, y = _coords(size)
    a, cell = rng.uniform(0, np.pi / 2), rng.uniform(5, 12)
    u, v = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    s = np.sin(np.pi * u / cell) * np.sin(np.pi * v / cell)
    return 0.5 + 0.5 * np.tanh(3 * s)


def two_tone(weight: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Blend two RGB colours by a weight map: (h, w) -> (h, w, 3)."""
    return c0 * (1 - weight[..., None]) + c1 * weight[..., None]


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos as float32 (h, w, 3) in [0, 1] (grey photos repeated to RGB)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]


def photo_crop(rng: np.random.Generator, split: str, size: int) -> tuple[np.ndarray, str]:
    """A random square crop of one of the split's photos, resized to (size, size, 3); grey ones get tinted."""
    name = PHOTOS[split][rng.integers(len(PHOTOS[split]))]
    photo = load_photo(name)
    h, w, _ = photo.shape
    side = int(rng.uniform(size, min(h, w, 5 * size)))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray((photo[top : top + side, left : left + side] * 255).astype(np.uint8))
    out = np.asarray(crop.resize((size, size), Image.BILINEAR, reducing_gap=2.0), np.float32) / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if np.ptp(photo.reshape(-1, 3).mean(0)) < 1e-6:  # a grey photo: map black..white to two random colours
        out = two_tone(out[..., 0], rng.uniform(0, 0.4, 3), rng.uniform(0.6, 1, 3))
    contrast = rng.uniform(0.5, 1.0)  # soften the photo a little so the shape stays the subject
    return out.mean((0, 1)) + contrast * (out - out.mean((0, 1))), name


def background(kind: str, rng: np.random.Generator, split: str, size: int) -> tuple[np.ndarray, str | None]:
    """A background (h, w, 3) in [0, 1] of the given kind, plus the photo's name for photo crops."""
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    if kind == "flat":
        return np.broadcast_to(c0, (size, size, 3)).astype(np.float32), None
    if kind == "gradient":
        return two_tone(_ramp(rng, size), c0, c1), None
    if kind == "stripes":  # soft, low-contrast stripes
        return two_tone(_stripes(rng, size, (10, 32)), c0, c0 + 0.3 * (c1 - c0)), None
    return photo_crop(rng, split, size)


def fill(kind: str, rng: np.random.Generator, size: int, away_from: np.ndarray, min_contrast: float) -> np.ndarray:
    """The shape's paint (h, w, 3): a colour at least ``min_contrast`` from ``away_from``, maybe textured."""
    for _ in range(32):
        c0 = rng.uniform(0, 1, 3)
        if np.linalg.norm(c0 - away_from) >= min_contrast:
            break
    c1 = np.clip(c0 + rng.uniform(-0.35, 0.35, 3), 0, 1)  # the second tone stays close to the first
    if kind == "flat":
        return np.broadcast_to(c0, (size, size, 3))
    if kind == "gradient":
        return two_tone(_ramp(rng, size), c0, c1)
    if kind == "stripes":
        return two_tone(_stripes(rng, size, (5, 14)), c0, c1)
    return two_tone(_checks(rng, size), c0, c1)


def hue_bin(rgb: np.ndarray) -> str:
    """The named hue bin of an RGB colour in [0, 1]: six 60-degree sectors centred on the primaries and
    secondaries (red at 0 degrees), or "grey" when its chroma is below ``GREY_CHROMA``.

    Read from the mean paint, so it draws no random numbers: adding it changed no image of the tiny world. The
    hue survives ``light_figure`` (an affine map a + b * rgb with b > 0 keeps every hue).
    """
    r, g, b = (float(v) for v in rgb)
    chroma = max(r, g, b) - min(r, g, b)
    if chroma < GREY_CHROMA:
        return "grey"
    if r == max(r, g, b):
        degrees = 60 * (((g - b) / chroma) % 6)
    elif g == max(r, g, b):
        degrees = 60 * ((b - r) / chroma + 2)
    else:
        degrees = 60 * ((r - g) / chroma + 4)
    return HUES[int(((degrees + 30) % 360) // 60)]


def light_figure(ground: np.ndarray, figure: np.ndarray, cfg: TinyWorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Darken the ground into [0, ground_max] and lighten the figure into [figure_min, 1].

    A fixed polarity (the shape is the light thing) is what lets a small ViT learn shape in minutes: with
    shapes darker or lighter at random, the prototype stayed near chance for hundreds of steps.
    """
    return ground * cfg.ground_max, cfg.figure_min + (1 - cfg.figure_min) * figure


# ---------------------------------------------------------------------------------------------------------
# Samples, batches and shards
# ---------------------------------------------------------------------------------------------------------


def make_sample(index: int, split: str = "train", cfg: TinyWorldConfig | None = None) -> tuple[np.ndarray, dict]:
    """Sample ``index`` of ``split``: an image (h, w, 3) uint8 and its description (label = index % classes).

    The description: label, class, split, index, background and fill kinds, the paint's hue bin, the photo's name,
    the shape's radius (fraction of the side) and its centre of mass (x, y), fractions of the side from the top
    left. Captions are made from it (``tinyworld.captions``).
    """
    image, _, meta = make_sample_with_mask(index, split, cfg)
    return image, meta


def make_sample_with_mask(index: int, split: str = "train", cfg: TinyWorldConfig | None = None
                          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Like ``make_sample``, plus the shape's coverage mask (h, w) uint8 (255 = shape)."""
    cfg = cfg or TinyWorldConfig()
    rng = sample_rng(index, split, cfg.seed)
    label = index % len(CLASSES)  # balanced classes, in a fixed cycle
    size = cfg.image_size
    bg_kind = BACKGROUNDS[rng.choice(len(BACKGROUNDS), p=cfg.background_probs)]
    fill_kind = FILLS[rng.choice(len(FILLS), p=cfg.fill_probs)]
    bg, photo = background(bg_kind, rng, split, size)
    paint = fill(fill_kind, rng, size, bg.mean((0, 1)), cfg.min_contrast)
    hue = hue_bin(paint.mean((0, 1)))  # the paint's mean colour, before lightening (draws no random numbers)
    bg, paint = light_figure(bg, paint, cfg)
    transform, centre = shape_placement(CLASSES[label], rng, cfg)
    mask = rasterize(CLASSES[label], transform, centre, cfg)[..., None]  # (h, w, 1) coverage
    image = bg * (1 - mask) + paint * mask
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    # size and position are read off the drawing (no random draws, so no pixel changed when they were added)
    radius = float(np.sqrt(abs(np.linalg.det(transform)))) / size  # fraction of the side
    x, y = mask_centroid(mask[..., 0])
    meta = {"label": label, "class": CLASSES[label], "split": split, "index": index,
            "background": bg_kind, "fill": fill_kind, "hue": hue, "photo": photo,
            "radius": round(radius, 4), "x": round(x, 4), "y": round(y, 4)}
    return image, np.rint(mask[..., 0] * 255).astype(np.uint8), meta


def make_batch(start: int, count: int, split: str = "train", cfg: TinyWorldConfig | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Samples start .. start+count-1 of a split: images (B, h, w, 3) uint8 and labels (B,) int64."""
    samples = [make_sample(i, split, cfg) for i in range(start, start + count)]
    images = np.stack([s[0] for s in samples])
    labels = np.array([s[1]["label"] for s in samples], dtype=np.int64)
    return images, labels


def make_samples(start: int, count: int, split: str = "train", cfg: TinyWorldConfig | None = None
                 ) -> tuple[np.ndarray, list[dict]]:
    """Samples start .. start+count-1 of a split: images (B, h, w, 3) uint8 and their descriptions."""
    samples = [make_sample(i, split, cfg) for i in range(start, start + count)]
    return np.stack([s[0] for s in samples]), [s[1] for s in samples]


def to_tensor(images: np.ndarray):
    """uint8 images (B, h, w, 3) -> float tensor (B, 3, h, w) in [-1, 1] (docs/method.md §3: Normalize(0.5, 0.5))."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
