"""The unified model's data: tiny-world images encoded ONCE by the tokenizer, with their captions and attributes.

    train = load_or_encode(tokenizer, "data/tokenizer", "train", 0, 16384, "runs/unified/cache")
    train.stacks      # (M, N, S) int64 code stacks in model/token_layout.py's ids: N = 64 grid positions in raster
                      #   order, S = D_pix + D_sem ids per position (pixel depths 1..8, then semantic depths 1..4)
    train.captions    # (M, 8, 17) int64 word ids of each image's 8 captions (tinyworld/captions.py), <end>, <pad>s
    train.attributes  # (M, 7) int64 attribute codes (captions.image_code: shape, colour, fill, background, ...)

Encoding costs about as much as a training step, and the model trains for thousands of steps on the same images,
so it is done once. A cache file is named by split and index range and records a fingerprint of the tokenizer's
weights: a file made by another tokenizer is encoded again, never silently reused.

**Held-out combinations.** ``HELD_OUT_PAIRS`` fixes, before any training, eight (shape, colour) pairs: shape i with
hue bin i mod 7, so every shape and every colour is in one. ``training_rows`` keeps only the images that show none
of them, so no text the model trains on is ever paired with such an image; drawing "a blue star" then tests
composition (blue from other shapes, star from other colours), not memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from dualtoken_lite.model.token_layout import TokenLayout, to_lm_sequence
from dualtoken_lite.settings import UserError, atomic_path
from dualtoken_lite.tinyworld.captions import (
    CAPTIONS_PER_IMAGE,
    CLASSIFIED,
    FIELDS,
    attribute_values,
    image_code,
    sample_captions,
)
from dualtoken_lite.tinyworld.drawing import make_samples, split_id, to_tensor
from dualtoken_lite.tinyworld.vocabulary import PAD, VOCABULARY

CACHE_VERSION = 2  # bump when what a cache file holds changes
CAPTION_SLOTS = 17  # stored ids per caption: at most 16 words, then <end> (then <pad>s)
SHAPE, COLOUR = FIELDS.index("shape"), FIELDS.index("colour")
HELD_OUT_PAIRS = tuple((shape, shape % len(CLASSIFIED["colour"])) for shape in range(len(CLASSIFIED["shape"])))
HELD_OUT_NAMES = tuple(f"{CLASSIFIED['colour'][c]} {CLASSIFIED['shape'][s]}" for s, c in HELD_OUT_PAIRS)


@dataclass
class TokenSet:
    """Encoded images of one split with their captions and attribute codes."""

    stacks: Tensor  # (M, N, S) int64 layout ids
    captions: Tensor  # (M, CAPTIONS_PER_IMAGE, CAPTION_SLOTS) int64 word ids
    attributes: Tensor  # (M, len(FIELDS)) int64 attribute codes
    indices: Tensor  # (M,) int64 sample index of each row within its split
    split: str  # "train" or "eval"
    layout: TokenLayout  # how the ids are laid out (grid, depths, codebook sizes)

    def __len__(self) -> int:
        return self.stacks.shape[0]


def held_out_combination(attributes: Tensor) -> Tensor:
    """(M, F) attribute codes -> (M,) bool: the image shows one of HELD_OUT_PAIRS."""
    pairs = torch.tensor(HELD_OUT_PAIRS)  # (8, 2)
    shown = attributes[:, [SHAPE, COLOUR]]  # (M, 2)
    return (shown[:, None, :] == pairs[None]).all(-1).any(-1)


def training_rows(data: TokenSet) -> Tensor:
    """Row indices of ``data`` a model may train on: every image that shows no held-out combination."""
    return torch.nonzero(~held_out_combination(data.attributes))[:, 0]


def check_training_rows(data: TokenSet, rows: Tensor) -> None:
    """Refuse training rows of which any shows a held-out combination (checked over the whole training set)."""
    shown = held_out_combination(data.attributes[rows])
    if bool(shown.any()):
        raise UserError(f"{int(shown.sum())} training images show a held-out combination ({', '.join(HELD_OUT_NAMES)}):"
                        " train on training_rows(data) only")


def fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    """A short sha256 of a tokenizer folder's weights file: which tokenizer made a cache."""
    digest = hashlib.sha256(Path(tokenizer_dir, "model.safetensors").read_bytes()).hexdigest()
    return digest[:16]


def layout_of(tokenizer) -> TokenLayout:
    """The token layout of a tokenizer (no specials: the model marks an image with its own <boi>)."""
    layout = TokenLayout.from_config(tokenizer.cfg, specials=False)
    if layout.semantic_depth == 0:
        raise UserError("the unified model needs a tokenizer with separate pixel and semantic codes; this one has "
                        "no semantic codebook (semantic_layer=None or shared_quantizer=True)")
    return layout


def caption_table(metas: list[dict]) -> Tensor:
    """Descriptions -> (M, CAPTIONS_PER_IMAGE, CAPTION_SLOTS) word ids of every caption: words, <end>, <pad>s."""
    out = torch.full((len(metas), CAPTIONS_PER_IMAGE, CAPTION_SLOTS), PAD, dtype=torch.long)
    for row, meta in enumerate(metas):
        for k, text in enumerate(sample_captions(meta)):
            ids = VOCABULARY.encode(text, CAPTION_SLOTS)
            out[row, k, : len(ids)] = torch.tensor(ids)
    return out


@torch.no_grad()
def encode_images(tokenizer, images, layout: TokenLayout, batch_size: int = 256) -> Tensor:
    """Images, uint8 (M, h, w, 3) or float (M, 3, h, w) in [-1, 1] -> code stacks (M, N, S) layout ids."""
    tokenizer.eval()
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = chunk if torch.is_tensor(chunk) else to_tensor(chunk)  # (b, 3, h, w) in [-1, 1]
        pixel, semantic = tokenizer.encode(x)  # (b, H, W, D_pix), (b, H, W, D_sem)
        out.append(to_lm_sequence(pixel, semantic, layout).reshape(pixel.shape[0], layout.grid**2, -1))
    return torch.cat(out)


def encode_split(tokenizer, split: str, start: int, count: int, batch_size: int = 256,
                 progress: bool = True) -> TokenSet:
    """Draw samples start .. start+count-1 of a split and encode them; captions and attributes from their
    descriptions, so tokens and text are of the same image by construction."""
    split_id(split)  # an unknown split is an error naming the known ones
    layout = layout_of(tokenizer)
    stacks, captions, attributes = [], [], []
    for first in tqdm(range(start, start + count, batch_size), desc=f"encode {split}", disable=not progress,
                      unit="batch"):
        images, metas = make_samples(first, min(batch_size, start + count - first), split)
        stacks.append(encode_images(tokenizer, images, layout, batch_size))
        captions.append(caption_table(metas))
        attributes.append(torch.from_numpy(np.stack([image_code(attribute_values(m)) for m in metas])))
    return TokenSet(torch.cat(stacks), torch.cat(captions), torch.cat(attributes), torch.arange(start, start + count),
                    split, layout)


def cache_path(cache_dir: str | os.PathLike, split: str, start: int, count: int) -> Path:
    """``{cache_dir}/{split}-{start}-{count}.safetensors``."""
    return Path(cache_dir) / f"{split}-{start}-{count}.safetensors"


def save_token_set(data: TokenSet, path: str | os.PathLike, tokenizer_id: str) -> Path:
    """Write a TokenSet as safetensors (small ints as int16) with its provenance; atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": str(CACHE_VERSION), "split": data.split, "tokenizer": tokenizer_id,
            "layout": json.dumps(data.layout.__dict__), "vocabulary": json.dumps(VOCABULARY.words)}
    tensors = {"stacks": data.stacks.to(torch.int16), "captions": data.captions.to(torch.int16),
               "attributes": data.attributes.to(torch.int16), "indices": data.indices.to(torch.int64)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_token_set(path: str | os.PathLike) -> tuple[TokenSet, dict]:
    """A cache file back as a TokenSet (ids as int64) and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(path))
    data = TokenSet(t["stacks"].long(), t["captions"].long(), t["attributes"].long(), t["indices"].long(),
                    meta["split"], TokenLayout(**json.loads(meta["layout"])))
    return data, meta


def load_or_encode(tokenizer, tokenizer_dir: str | os.PathLike, split: str, start: int, count: int,
                   cache_dir: str | os.PathLike, progress: bool = True) -> TokenSet:
    """The cached TokenSet of samples start .. start+count-1 of ``split``; encoded and written on first use.

    A cache made by another tokenizer, layout, vocabulary or cache version is encoded again.
    """
    path, tokenizer_id = cache_path(cache_dir, split, start, count), fingerprint(tokenizer_dir)
    if path.is_file():
        data, meta = read_token_set(path)
        fresh = (meta.get("version") == str(CACHE_VERSION) and meta.get("tokenizer") == tokenizer_id
                 and data.layout == layout_of(tokenizer) and meta.get("vocabulary") == json.dumps(VOCABULARY.words))
        if fresh:
            return data
        print(f"{path} was made by another tokenizer or version: encoding again")
    data = encode_split(tokenizer, split, start, count, progress=progress)
    save_token_set(data, path, tokenizer_id)
    return data
