"""Shared by the command-line tests: a small random tokenizer saved to disk, a few labelled tiny-world images, and
an exact comparison of checkpoints' nested tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.quantizers.residual import QuantizerConfig
from dualtoken_lite.tinyworld.drawing import make_batch
from dualtoken_lite.tinyworld.shards import encode_png, sample_key


def small_model(kind: str = "dual", seed: int = 0) -> DualToken:
    """The tiny preset with small quantizers (different depth and K per branch, so a mix-up shows), after one
    training-mode forward and codebook update so the codebooks hold data-initialised codes. Eval mode."""
    cfg = model_preset("tiny")
    cfg.pixel_quantizer = QuantizerConfig(code_dim=8, depth=2, codebook_size=16)
    cfg.semantic_quantizer = QuantizerConfig(code_dim=8, depth=3, codebook_size=32)
    if kind == "shared":
        cfg.shortcut_layer, cfg.pixel_layer, cfg.semantic_layer, cfg.shared_quantizer = None, 3, 3, True
    elif kind == "no_semantic":
        cfg.semantic_layer = None
    elif kind == "per_depth":
        cfg.pixel_quantizer.shared_codebook = cfg.semantic_quantizer.shared_codebook = False
    torch.manual_seed(seed)
    model = DualToken(cfg).train()
    with torch.no_grad():
        model(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1)
    model.update_codebooks()
    return model.eval()


def saved_model(folder: Path, kind: str = "dual") -> tuple[DualToken, Path]:
    model = small_model(kind)
    model.save_pretrained(folder)
    return model, folder


def tiny_images(count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """count held-out tiny-world images (count, 64, 64, 3) uint8 and their labels."""
    return make_batch(0, count, "eval")


def image_folder(root: Path, count: int = 6) -> Path:
    """root/<label>/<i>.png: a folder whose subfolders give class labels."""
    images, labels = tiny_images(count)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"{label:02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"{label:02d}" / f"img{i}.png")
    return root


def shard(path: Path, count: int = 6) -> Path:
    """A plain WebDataset shard of count labelled PNG samples, named as the tiny world's eval samples 0.. are."""
    images, labels = tiny_images(count)
    with wds.TarWriter(str(path)) as sink:
        for i, (image, label) in enumerate(zip(images, labels)):
            sink.write({"__key__": sample_key("eval", i), "png": encode_png(image), "cls": str(int(label)).encode()})
    return path


def same_tensors(a, b) -> bool:
    """Nested dicts / lists / tuples of tensors and plain values, equal exactly."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b
