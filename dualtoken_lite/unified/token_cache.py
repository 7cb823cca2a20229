"""Token datasets: the tiny world encoded ONCE by a trained tokenizer, cached as code files in the LM token layout.

    tokenizer = DualToken.from_pretrained("data/tokenizer")
    train = load_or_encode(tokenizer, "data/tokenizer", "train", 0, 16384, "runs/unified/cache")
    train.tokens    # (N, L) int64 ids in model/token_layout.py's layout: raster positions, each position's
                    #   pixel codes d = 1..8 then its semantic codes d = 1..4; L = 64 x 12 = 768, no <boi>/<eoi>
    train.stacks()  # (N, H*W, S) the same ids as one stack of S = D_pix + D_sem ids per grid position
    train.labels    # (N, Q) answer ids of the questions (unified/questions.py) from each sample's description

Why a cache: the readers and the generator train for thousands of steps on the same images; encoding them costs
about as much as a training step, so it is done once. A cache file is named by split and index range and records
the layout and a fingerprint of the tokenizer's weights: a file made by another tokenizer is re-encoded, never
silently reused. Samples come from ``tinyworld.make_sample(i, split)``, so the description (labels) and the
pixels (tokens) are of the same image by construction; the train and eval splits never share an image.
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
from dualtoken_lite.tinyworld.drawing import make_sample, split_id, to_tensor
from dualtoken_lite.unified.questions import QUESTION_NAMES, describe

CACHE_VERSION = 1  # bump when what a cache file holds changes


@dataclass
class TokenSet:
    """Encoded images of one split: token ids, question labels, and where they came from."""

    tokens: Tensor  # (N, L) int64 layout ids (no specials)
    labels: Tensor  # (N, Q) int64 answer ids, Q = len(QUESTION_NAMES)
    indices: Tensor  # (N,) int64 sample index of each row within its split
    split: str  # "train" or "eval": the tiny-world split every row came from
    layout: TokenLayout  # how the ids are laid out (grid, depths, codebook sizes)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def stacks(self) -> Tensor:
        """(N, H*W, S): each grid position's stack of S = D_pix + D_sem ids, positions in raster order."""
        S = self.layout.pixel_depth + self.layout.semantic_depth
        return self.tokens.reshape(len(self), self.layout.grid**2, S)


def fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    """A short sha256 of a tokenizer folder's weights file: which tokenizer made a cache."""
    digest = hashlib.sha256(Path(tokenizer_dir, "model.safetensors").read_bytes()).hexdigest()
    return digest[:16]


def layout_of(tokenizer) -> TokenLayout:
    """The token layout of a tokenizer (no specials: the unified models see one image at a time)."""
    layout = TokenLayout.from_config(tokenizer.cfg, specials=False)
    if layout.semantic_depth == 0:
        raise UserError("the unified models need a tokenizer with separate pixel and semantic codes; this one has "
                        "no semantic codebook (semantic_layer=None or shared_quantizer=True)")
    return layout


@torch.no_grad()
def encode_split(tokenizer, split: str, start: int, count: int, batch_size: int = 256,
                 progress: bool = True) -> TokenSet:
    """Draw samples start .. start+count-1 of a split, encode them, and read their question labels."""
    split_id(split)  # an unknown split is an error naming the known ones
    layout = layout_of(tokenizer)
    tokenizer.eval()
    tokens, labels = [], []
    for first in tqdm(range(start, start + count, batch_size), desc=f"encode {split}", disable=not progress,
                      unit="batch"):
        samples = [make_sample(i, split) for i in range(first, min(first + batch_size, start + count))]
        images = to_tensor(np.stack([image for image, _ in samples]))  # (B, 3, 64, 64) in [-1, 1]
        pixel, semantic = tokenizer.encode(images)  # (B, H, W, D_pix), (B, H, W, D_sem)
        tokens.append(to_lm_sequence(pixel, semantic, layout))  # (B, L)
        labels.append(torch.tensor([describe(d) for _, d in samples]))  # (B, Q)
    return TokenSet(torch.cat(tokens), torch.cat(labels), torch.arange(start, start + count), split, layout)


def cache_path(cache_dir: str | os.PathLike, split: str, start: int, count: int) -> Path:
    """``{cache_dir}/{split}-{start}-{count}.safetensors``."""
    return Path(cache_dir) / f"{split}-{start}-{count}.safetensors"


def save_token_set(data: TokenSet, path: str | os.PathLike, tokenizer_id: str) -> Path:
    """Write a TokenSet as safetensors (ids as int16) with its provenance; atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": str(CACHE_VERSION), "split": data.split, "tokenizer": tokenizer_id,
            "layout": json.dumps(data.layout.__dict__), "questions": json.dumps(QUESTION_NAMES)}
    small = data.layout.vocab_size <= torch.iinfo(torch.int16).max
    tensors = {"tokens": data.tokens.to(torch.int16 if small else torch.int32),
               "labels": data.labels.to(torch.int16), "indices": data.indices.to(torch.int64)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_token_set(path: str | os.PathLike) -> tuple[TokenSet, dict]:
    """A cache file back as a TokenSet (ids as int64) and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    layout = TokenLayout(**json.loads(meta["layout"]))
    data = TokenSet(tensors["tokens"].long(), tensors["labels"].long(), tensors["indices"].long(), meta["split"],
                    layout)
    return data, meta


def load_or_encode(tokenizer, tokenizer_dir: str | os.PathLike, split: str, start: int, count: int,
                   cache_dir: str | os.PathLike, progress: bool = True) -> TokenSet:
    """The cached TokenSet of samples start .. start+count-1 of ``split``; encoded and written on first use.

    A cache made by another tokenizer, another layout or another cache version is encoded again.
    """
    path, tokenizer_id = cache_path(cache_dir, split, start, count), fingerprint(tokenizer_dir)
    if path.is_file():
        data, meta = read_token_set(path)
        fresh = (meta.get("version") == str(CACHE_VERSION) and meta.get("tokenizer") == tokenizer_id
                 and data.layout == layout_of(tokenizer) and meta.get("questions") == json.dumps(QUESTION_NAMES))
        if fresh:
            return data
        print(f"{path} was made by another tokenizer or version: encoding again")
    data = encode_split(tokenizer, split, start, count, progress=progress)
    save_token_set(data, path, tokenizer_id)
    return data
