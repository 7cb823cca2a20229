"""A supervised attribute classifier of the tiny world: an independent judge of what an image shows (docs/method.md §9).

The teacher (``tinyworld/teacher.py``) reads attributes zero-shot, through its text tower; an image it misreads may
be a bad image or a teacher blind spot. This judge answers the same four questions a second way: a small CNN
trained on the tiny world's own labels (no text, no teacher weights), with one linear head per attribute:

    attribute   values (label order: ``captions.CLASSIFIED``)
    shape       disc square triangle plus star ring crescent heart     (8)
    colour      red yellow green cyan blue magenta grey                (7 hue bins)
    fill        solid shaded striped checked                           (4)
    background  plain gradient wavy photo                              (4)

    model = load_classifier()                       # data/classifier/, frozen, eval mode, float32
    logits = model(images)                          # (B, 3, 64, 64) in [-1, 1] -> {attribute: (B, n_values)}
    model.features(images)                          # (B, E): the pooled embedding the heads read
    classify(model, images_uint8)                   # uint8 (B, 64, 64, 3) -> {attribute: (B,) label indices}

The model: four stride-2 stages (conv 3x3 stride 2, GroupNorm, GELU, conv 3x3, GroupNorm, GELU), 64 -> 4 px,
widths 32-64-128-128, then the mean and the max over the last 4 x 4 map, (B, 256). The first stage's strided conv
(``Stem``) reads the pixels with 24 channels and their saturated ``detail`` with 8: the fills differ by a few
levels of 255 inside the shape, too faint for plain pixels to be learned in minutes. Trained by
``tools/classifier.py`` (cross-entropy summed over the four attributes, fill's weighted 2 since it is learned last,
training images from the train split only), about 7 CPU minutes on one thread:

    python -m dualtoken_lite classifier --out data/classifier            # the shipped recipe
    python -m dualtoken_lite classifier --out runs/clf --steps 200       # a quick one

The folder holds ``classifier.safetensors`` (float16) and ``classifier.json`` (the card: recipe, architecture,
train minutes, threads, load average, and the held-out accuracy of each attribute on eval images 0-1023, measured
on the saved float16 weights loaded back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dualtoken_lite.settings import atomic_path, atomic_write_text
from dualtoken_lite.tinyworld.captions import CLASSIFIED, attribute_values, image_code
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.paths import DATA_ROOT

CLASSIFIER_DIR = DATA_ROOT / "classifier"  # the shipped classifier: classifier.safetensors + classifier.json
WEIGHTS_FILE, CARD_FILE = "classifier.safetensors", "classifier.json"
ATTRIBUTES = tuple(CLASSIFIED)  # ("shape", "colour", "fill", "background"): the first four fields of image_code
COMMAND = "python -m dualtoken_lite classifier --out data/classifier"  # what makes the shipped one (tools/classifier.py)
HELD_OUT = (0, 1024)  # (first, count) of the eval images the card's accuracies are measured on
WIDTHS, GROUPS = (32, 64, 128, 128), 8  # channels of the stride-2 stages (64 px -> 4 px), GroupNorm groups
TEXTURE_WIDTH, DETAIL_GAIN = 8, 64.0  # first-stage channels that read the pixels' detail, and its gain (``detail``)


# ------------------------------------------------------------------------------------------------------ the model
def detail(images: Tensor, gain: float) -> Tensor:
    """Saturating high-pass: tanh(gain * (x - mean of its 3 x 3 neighbourhood)), (B, 3, h, w) -> same, in (-1, 1).

    The fills are faint: inside the shape a striped or checked paint varies by about 7 / 255, a shaded one by about
    2 / 255, a solid one not at all, while an edge jumps by 100 / 255. With gain 64 one level of 255 already reads
    0.4 and an edge saturates at 1, so the first convolution sees a texture as plainly as an edge. From the plain
    pixels alone the fill head stays at its prior (the majority class) for the whole training budget.
    """
    return torch.tanh(gain * (images - F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)))


class Stem(nn.Module):
    """The first stage's downsampling conv, in two parts with their own GroupNorm: one reads the pixels (colour,
    shape), one reads their ``detail`` (texture), so the saturated detail does not drown the colour differences
    in a shared normalisation. (B, 3, 64, 64) -> (B, width, 32, 32)."""

    def __init__(self, width: int, texture_width: int, groups: int, gain: float):
        super().__init__()
        self.gain = gain
        colour_width = width - texture_width
        self.colour = nn.Sequential(nn.Conv2d(3, colour_width, 3, stride=2, padding=1),
                                    nn.GroupNorm(groups * colour_width // width, colour_width))
        self.texture = nn.Sequential(nn.Conv2d(3, texture_width, 3, stride=2, padding=1),
                                     nn.GroupNorm(groups * texture_width // width, texture_width))

    def forward(self, images: Tensor) -> Tensor:
        return torch.cat([self.colour(images), self.texture(detail(images, self.gain))], 1)  # (B, width, 32, 32)


def conv_stage(c_in: int, c_out: int, groups: int, first: nn.Module | None = None) -> nn.Sequential:
    """One stage, halving the side: (B, c_in, s, s) -> (B, c_out, s/2, s/2). ``first`` replaces its strided
    conv and norm (the ``Stem`` of stage 1)."""
    down = [first] if first is not None else [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                                              nn.GroupNorm(groups, c_out)]
    return nn.Sequential(*down, nn.GELU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.GELU())


class AttributeClassifier(nn.Module):
    """A small CNN trunk (``Stem`` then stride-2 stages), mean and max pooling, one linear head per attribute."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, groups: int = GROUPS,
                 texture_width: int = TEXTURE_WIDTH, detail_gain: float = DETAIL_GAIN):
        super().__init__()
        self.widths, self.groups = tuple(widths), groups
        self.texture_width, self.detail_gain = texture_width, detail_gain
        chans = (3, *self.widths)
        stem = Stem(self.widths[0], texture_width, groups, detail_gain)
        self.stages = nn.Sequential(*(conv_stage(a, b, groups, stem if i == 0 else None)
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))))
        self.embed_dim = 2 * chans[-1]  # E: mean and max of the last stage
        self.heads = nn.ModuleDict({a: nn.Linear(self.embed_dim, len(CLASSIFIED[a])) for a in ATTRIBUTES})

    def features(self, images: Tensor) -> Tensor:
        """Images (B, 3, 64, 64) in [-1, 1] -> the pooled embedding (B, E), E = 2 * widths[-1]."""
        x = self.stages(images)  # (B, C, 64 / 2**stages, same)
        # the mean says how much of something there is, the max whether it is anywhere (a small textured patch)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)  # (B, 2C)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Images (B, 3, 64, 64) in [-1, 1] -> {attribute: logits (B, n_values)}."""
        x = self.features(images)
        return {a: head(x) for a, head in self.heads.items()}


# ------------------------------------------------------------------------------------------------- labels, reading
def attribute_labels(metas: list[dict]) -> dict[str, np.ndarray]:
    """Samples' descriptions -> {attribute: label indices (B,)}, read off ``captions.image_code``."""
    codes = np.stack([image_code(attribute_values(m)) for m in metas])  # (B, F): shape, colour, fill, bg first
    return {a: codes[:, i] for i, a in enumerate(ATTRIBUTES)}


@torch.no_grad()
def classify(model: AttributeClassifier, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """uint8 images (B, 64, 64, 3) -> {attribute: predicted label index (B,)}, read ``batch_size`` at a time."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {a: [] for a in ATTRIBUTES}
    for first in range(0, len(images), batch_size):
        logits = model(to_tensor(images[first : first + batch_size]))  # {a: (b, n_a)}
        for a in ATTRIBUTES:
            parts[a].append(logits[a].argmax(-1).numpy())
    model.train(was_training)
    return {a: np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for a, p in parts.items()}


def accuracy(model: AttributeClassifier, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of images whose predicted value equals the label, per attribute."""
    predicted = classify(model, images)
    return {a: round(float((predicted[a] == labels[a]).mean()), 4) for a in ATTRIBUTES}


def held_out_set(first: int = HELD_OUT[0], count: int = HELD_OUT[1]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Eval images first .. first+count-1 (uint8 (B, 64, 64, 3)) and their labels: what the card's figures read."""
    images, metas = make_samples(first, count, "eval")
    return images, attribute_labels(metas)


# ------------------------------------------------------------------------------------------------- saving, loading
def missing(file: Path) -> FileNotFoundError:
    """The error for a classifier file that is not there: its path and the command that makes it."""
    return FileNotFoundError(f"classifier file {file} is missing; train one with `python -m "
                             f"dualtoken_lite classifier --out {file.parent}` (the shipped one: `{COMMAND}`)")


def save_classifier(model: AttributeClassifier, card: dict, folder: str | os.PathLike) -> None:
    """Write ``classifier.safetensors`` (float16: half the bytes; figures are measured on it) and
    ``classifier.json`` (the card, plus the architecture and the attributes' values), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp))
        os.chmod(tmp, 0o644)  # safetensors writes 0600; a shipped file is readable by all, like the rest of data/
    write_card(folder, card, model)


def write_card(folder: Path, card: dict, model: AttributeClassifier) -> None:
    """Write the card of ``model`` in ``folder``: ``card`` plus the architecture and the attributes' values."""
    card = {**card, "model": {"widths": list(model.widths), "groups": model.groups,
                              "texture_width": model.texture_width, "detail_gain": model.detail_gain},
            "attributes": {a: list(CLASSIFIED[a]) for a in ATTRIBUTES}}
    atomic_write_text(folder / CARD_FILE, json.dumps(card, indent=2) + "\n")


def read_card(folder: str | os.PathLike | None = None) -> dict:
    """The card (``classifier.json``) of ``folder`` (default: the shipped classifier)."""
    file = Path(folder or CLASSIFIER_DIR) / CARD_FILE
    if not file.exists():
        raise missing(file)
    return json.loads(file.read_text())


def load_classifier(folder: str | os.PathLike | None = None) -> AttributeClassifier:
    """The shipped (or ``folder``'s) classifier: frozen, in eval mode, computing in float32."""
    folder = Path(folder or CLASSIFIER_DIR)
    info = read_card(folder)
    if info.get("attributes") != {a: list(CLASSIFIED[a]) for a in ATTRIBUTES}:
        raise ValueError(f"the classifier in {folder} names other attribute values than captions.CLASSIFIED; "
                         f"retrain it with `python -m dualtoken_lite classifier --out {folder} --overwrite`")
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise missing(weights)
    arch = info["model"]
    model = AttributeClassifier(tuple(arch["widths"]), arch["groups"], arch["texture_width"], arch["detail_gain"])
    state = {k: v.float() for k, v in load_file(str(weights)).items()}  # stored float16, computed in float32
    model.load_state_dict(state, strict=True)  # a missing or extra key raises, listing them
    return model.eval().requires_grad_(False)
