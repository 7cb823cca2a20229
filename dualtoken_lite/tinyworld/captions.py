"""Captions of the tiny world: short English sentences made from each sample's own description (docs/method.md §9).

SigLIP learns from images paired with text; the tiny world's text is written here, from what the drawing knows
about each image (``drawing.make_sample``'s description):

    "a small red striped star on a photo at the top left"
     size colour fill shape  background   position

| attribute  | words (one per value)                                 | read from                                       |
|------------|-------------------------------------------------------|-------------------------------------------------|
| shape      | disc square triangle plus star ring crescent heart    | the class                                       |
| colour     | red yellow green cyan blue magenta grey               | the paint's hue bin (``drawing.hue_bin``)       |
| fill       | solid shaded striped checked                          | the paint: flat, gradient, stripes, checks      |
| background | plain gradient wavy photo                             | the ground: flat, gradient, soft stripes, photo |
| size       | small large (unnamed in between)                      | the radius: < 0.28 or > 0.36 of the side        |
| position   | top / bottom, left / right, middle (unnamed between)  | the shape's centre of mass                      |

No word names two attributes (a striped shape is "striped", a striped ground is "wavy"), so a caption's words
say what they describe even to a model that reads them as a bag of words. Size and position are named only where
they are clear: a radius between the two bands, or a centre between "left" and "middle", is never named, so every
named word is true of its image with a margin.

Each image has ``CAPTIONS_PER_IMAGE`` captions, planned from the sample's own seed (a stream separate from the
one that draws its pixels): caption 0 names every attribute that can be named; the others name a random subset
(at least one attribute) in one of ``FRAMES`` wordings. So the text varies in wording and in what it mentions, and
a caption is a pure function of (split, index):

    captions = sample_captions(meta)                 # meta = make_sample(i, split)[1]: 8 strings
    true_of(claim_code(text)[None], image_code(attribute_values(meta))[None])   # (1, 1): the caption holds

Flipping or turning an image by 90 degrees moves its shape: ``turn_values`` moves the position words with
it (the augmentation of ``caption_batches.py``), so an augmented image's captions stay true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualtoken_lite.tinyworld.drawing import BACKGROUNDS, CLASSES, FILLS, HUES, split_id

# Words of each attribute, in the drawing's order of values.
SHAPE_WORDS = CLASSES
COLOUR_WORDS = HUES
FILL_WORDS = dict(zip(FILLS, ("solid", "shaded", "striped", "checked")))  # drawing's fill kind -> word
BACKGROUND_WORDS = dict(zip(BACKGROUNDS, ("plain", "gradient", "wavy", "photo")))  # background kind -> word
SIZE_WORDS = ("small", "large")
SMALL_BELOW, LARGE_ABOVE = 0.28, 0.36  # radius (fraction of the side) bands of "small" and "large"
SIDE_BAND, MIDDLE_BAND = 0.08, 0.04  # |centre - 0.5| beyond SIDE_BAND: a side word; within MIDDLE_BAND: "middle"

# The attributes zero-shot classification asks about, with their words in label order (evaluation/zero_shot.py).
CLASSIFIED = {
    "shape": tuple(SHAPE_WORDS),
    "colour": tuple(COLOUR_WORDS),
    "fill": tuple(FILL_WORDS.values()),
    "background": tuple(BACKGROUND_WORDS.values()),
}
ATTRIBUTES = ("shape", "colour", "fill", "background", "size", "position")  # what a caption can name
FRAMES = ("{np}{bg}{pos}", "a picture of {np}{bg}{pos}", "there is {np}{bg}{pos}", "{pos}, {np}{bg}")
CAPTIONS_PER_IMAGE = 8  # captions planned per image: 0 names everything nameable, 1.. a random subset
NAME_PROBABILITY = {"shape": 0.6, "colour": 0.5, "fill": 0.5, "background": 0.5, "size": 0.3, "position": 0.3}
CAPTION_STREAM = 1  # spawn key of the caption planner's generator: independent of the pixels' generator


@dataclass(frozen=True)
class CaptionPlan:
    """Which attributes one caption names and in which wording; applied to a description by ``render``."""

    frame: int  # index into FRAMES
    named: tuple[str, ...]  # attributes the caption names (a subset of ATTRIBUTES)


# ------------------------------------------------------------------------------------------- description -> words
def side(offset: float) -> int | None:
    """A centre's offset from the middle (fraction of the side) -> -1 / +1 (a side), 0 (middle) or None (unclear)."""
    if abs(offset) >= SIDE_BAND:
        return -1 if offset < 0 else 1
    return 0 if abs(offset) <= MIDDLE_BAND else None


def attribute_values(meta: dict) -> dict:
    """The value of every attribute of a sample: words, except position = (horizontal, vertical) in {-1, 0, 1, None}.

    Size is None between its two bands; a position coordinate is None between a side and the middle.
    """
    radius = meta["radius"]
    size = "small" if radius < SMALL_BELOW else "large" if radius > LARGE_ABOVE else None
    return {"shape": meta["class"], "colour": meta["hue"], "fill": FILL_WORDS[meta["fill"]],
            "background": BACKGROUND_WORDS[meta["background"]], "size": size,
            "position": (side(meta["x"] - 0.5), side(meta["y"] - 0.5))}


def position_phrase(position: tuple[int | None, int | None]) -> str | None:
    """(horizontal, vertical) -> "at the top left", "at the bottom", "on the left", "in the middle" or None."""
    h, v = position
    horizontal = {-1: "left", 1: "right"}.get(h)
    vertical = {-1: "top", 1: "bottom"}.get(v)
    if vertical:
        return f"at the {vertical}" + (f" {horizontal}" if horizontal else "")
    if horizontal:
        return f"on the {horizontal}"
    return "in the middle" if (h, v) == (0, 0) else None


def nameable(values: dict) -> tuple[str, ...]:
    """The attributes of an image that a caption may name (size and position only where they are clear)."""
    return tuple(a for a in ATTRIBUTES if a not in ("size", "position") or
                 (a == "size" and values["size"]) or (a == "position" and position_phrase(values["position"])))


# ------------------------------------------------------------------------------------------------ plan, render
def caption_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The caption planner's generator of one sample: seeded like its pixels, on a separate stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, split_id(split), index], spawn_key=(CAPTION_STREAM,)))


def plan_captions(meta: dict, count: int = CAPTIONS_PER_IMAGE, seed: int = 0) -> list[CaptionPlan]:
    """The sample's caption plans: the first names every nameable attribute, the rest a random non-empty subset."""
    rng = caption_rng(meta["split"], meta["index"], seed)
    can = nameable(attribute_values(meta))
    plans = [CaptionPlan(int(rng.integers(len(FRAMES))), can)]
    for _ in range(count - 1):
        frame = int(rng.integers(len(FRAMES)))
        named = tuple(a for a in can if rng.random() < NAME_PROBABILITY[a])
        if not named:  # a caption names at least one thing
            named = (can[int(rng.integers(len(can)))],)
        plans.append(CaptionPlan(frame, named))
    return plans


def render(values: dict, plan: CaptionPlan) -> str:
    """One caption: the plan's frame filled with the named attributes' words (unnamed shape -> "shape")."""
    named = set(plan.named)
    words = [values[a] for a in ("size", "colour", "fill") if a in named and values[a]]
    words.append(values["shape"] if "shape" in named else "shape")
    np_ = "a " + " ".join(words)
    bg = ""
    if "background" in named:
        bg = " on a photo" if values["background"] == "photo" else f" on a {values['background']} background"
    pos = position_phrase(values["position"]) if "position" in named else None
    frame = FRAMES[plan.frame]
    if pos is None:
        return frame.format(np=np_, bg=bg, pos="").replace(", ", "")
    return frame.format(np=np_, bg=bg, pos=f" {pos}" if frame.index("{pos}") else pos)


def one_attribute_caption(attribute: str, word: str, frame: int = 0) -> str:
    """A caption naming one attribute only, e.g. ("colour", "red", 1) -> "a picture of a red shape"."""
    values = {"shape": "shape", "colour": None, "fill": None, "size": None, "background": None, "position": (None,) * 2}
    return render({**values, attribute: word}, CaptionPlan(frame, (attribute,)))


def sample_captions(meta: dict, count: int = CAPTIONS_PER_IMAGE, seed: int = 0) -> list[str]:
    """All captions of a sample (``count`` strings; the first names everything nameable)."""
    values = attribute_values(meta)
    return [render(values, plan) for plan in plan_captions(meta, count, seed)]


def counterfactual(values: dict, plan: CaptionPlan, rng: np.random.Generator, attribute: str | None = None) -> str:
    """The caption of ``plan`` with one named attribute (``attribute``, or one at random) changed to another value:
    false of the image.

    A hard negative: it differs from a true caption in exactly one attribute, so telling them apart takes that
    attribute (a shape, a colour, a side), not whatever else is easiest to see.
    """
    attribute = attribute or plan.named[int(rng.integers(len(plan.named)))]
    if attribute == "position":
        h, v = values["position"]
        flipped = (flip_side(h) if h else h, flip_side(v) if v else v)  # the other side ...
        if flipped == (h, v):  # ... or, from the middle, a side
            flipped = ((-1, 1)[int(rng.integers(2))], None) if rng.random() < 0.5 else (None, (-1, 1)[int(rng.integers(2))])
        return render({**values, "position": flipped}, plan)
    options = SIZE_WORDS if attribute == "size" else CLASSIFIED[attribute]
    others = [w for w in options if w != values[attribute]]
    return render({**values, attribute: others[int(rng.integers(len(others)))]}, plan)


# ------------------------------------------------------------------------------------------------ claims
# A caption's claims are read off its words (no word names two attributes), so they hold for any text. Codes:
# one small integer per field, in FIELDS order; an image has a value in every field, a caption -1 where it is silent.
FIELDS = ("shape", "colour", "fill", "background", "size", "horizontal", "vertical")
SIDES = {-1: 0, 0: 1, 1: 2, None: 3}  # a position coordinate -> its code (3: between a side and the middle)
WORD_CLAIMS = {  # word -> ((field, code), ...) it claims
    **{w: (("shape", i),) for i, w in enumerate(CLASSIFIED["shape"])},
    **{w: (("colour", i),) for i, w in enumerate(CLASSIFIED["colour"])},
    **{w: (("fill", i),) for i, w in enumerate(CLASSIFIED["fill"])},
    **{w: (("background", i),) for i, w in enumerate(CLASSIFIED["background"])},
    **{w: (("size", i),) for i, w in enumerate(SIZE_WORDS)},
    "left": (("horizontal", 0),), "right": (("horizontal", 2),), "top": (("vertical", 0),),
    "bottom": (("vertical", 2),), "middle": (("horizontal", 1), ("vertical", 1)),
}


def image_code(values: dict) -> np.ndarray:
    """An image's attribute values as codes (len(FIELDS),): size 2 = between the bands."""
    h, v = values["position"]
    size = SIZE_WORDS.index(values["size"]) if values["size"] else 2
    return np.array([CLASSIFIED["shape"].index(values["shape"]), CLASSIFIED["colour"].index(values["colour"]),
                     CLASSIFIED["fill"].index(values["fill"]), CLASSIFIED["background"].index(values["background"]),
                     size, SIDES[h], SIDES[v]], dtype=np.int64)


def claim_code(text: str) -> np.ndarray:
    """What a caption claims, as codes (len(FIELDS),), -1 where it names nothing (unknown words claim nothing)."""
    code = np.full(len(FIELDS), -1, dtype=np.int64)
    for word in text.lower().replace(",", " ").split():
        for field, value in WORD_CLAIMS.get(word, ()):
            code[FIELDS.index(field)] = value
    return code


def true_of(claims, images):
    """Whether each caption is true of each image: claims (T, F), images (I, F) -> (I, T) bool (numpy or torch).

    A caption is true of an image when every field it names has the image's value.
    """
    c, i = claims[None, :, :], images[:, None, :]
    return ((c == i) | (c < 0)).all(-1)


# ------------------------------------------------------------------------------------------------ augmentation
def flip_side(s: int | None) -> int | None:
    """A side seen from the other side of the image: -1 <-> 1; the middle and an unclear side stay."""
    return None if s is None else -s


def turn_position(position: tuple, code: int) -> tuple:
    """Where a shape's (horizontal, vertical) sides go when its image is turned by ``code`` (``dihedral``'s codes):
    code % 4 quarter turns counter-clockwise (torch.rot90 over (h, w)), then a left-right mirror when code >= 4."""
    h, v = position
    for _ in range(code % 4):
        h, v = v, flip_side(h)  # a quarter turn: right -> top, top -> left
    return (flip_side(h), v) if code >= 4 else (h, v)


def turn_values(values: dict, code: int) -> dict:
    """Attribute values of an image after the flip/turn ``code``: only the position moves."""
    return {**values, "position": turn_position(values["position"], code)}
