"""Judging generated images with the shape classifier: class accuracy and a Frechet distance.

    judge = Judge(reference_images)                       # uint8 (M, 64, 64, 3) held-out images
    judge(images, labels)   # -> {"teacher_accuracy", "per_class_accuracy", "frechet", "count"}

The judge is the 8-way shape classifier the unified models were measured with (``data/unified/shape_classifier/``:
the tiny preset's trunk plus a linear class head, trained on the tiny world's shapes; the tiny world's teacher
before it became a tiny SigLIP). The figures in ``data/unified/results.json`` are its readings.

* **Class accuracy of the decoded pixels**: the classifier reads each image; a "star" prompt scores when it says
  star. Chance is 1/8.
* **Frechet distance** between teacher embeddings (the pooled 128-d MAP output) of the images and of the held-out
  reference set: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula with the teacher in place
  of Inception (evaluation/external.build_fid with a custom feature). A sampler that draws one image per class
  has a collapsed covariance and scores badly even when every image is classified right.

The ceiling of any generator that decodes through this tokenizer: the same two figures on the tokenizer's own
reconstructions of held-out images (``reconstruction_ceiling``), measured on images other than the reference ones.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from dualtoken_lite.datasets.images import to_uint8
from dualtoken_lite.evaluation.external import build_fid
from dualtoken_lite.model.backbone import build_tiny_trunk
from dualtoken_lite.model.config import BackboneConfig
from dualtoken_lite.settings import from_dict
from dualtoken_lite.tinyworld.drawing import CLASSES, make_sample, to_tensor
from dualtoken_lite.tinyworld.paths import SHAPE_CLASSIFIER_DIR


def load_shape_classifier(folder: str | os.PathLike | None = None) -> tuple[nn.Module, nn.Linear]:
    """The shape classifier (default: ``data/unified/shape_classifier/``) as (trunk, head), frozen, in eval mode.

    ``trunk(images)`` maps (B, 3, 64, 64) in [-1, 1] to the pooled embedding (B, C); ``head`` maps it to 8 logits.
    """
    folder = Path(folder or SHAPE_CLASSIFIER_DIR)
    weights, card = folder / "teacher.safetensors", folder / "teacher.json"
    for file in (weights, card):
        if not file.exists():
            raise FileNotFoundError(f"shape classifier file {file} is missing (it ships in {SHAPE_CLASSIFIER_DIR})")
    info = json.loads(card.read_text())
    trunk = build_tiny_trunk(from_dict(BackboneConfig, info["backbone"]))
    head = nn.Linear(trunk.embed_dim, len(info["classes"]))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}  # stored float16, computed in float32
    trunk.load_state_dict({k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")})
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    return trunk.eval().requires_grad_(False), head.eval().requires_grad_(False)


def held_out_images(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Eval-split samples start .. start+count-1: uint8 images (B, h, w, 3) and class labels (B,)."""
    samples = [make_sample(i, "eval") for i in range(start, start + count)]
    return np.stack([s[0] for s in samples]), np.array([s[1]["label"] for s in samples])


class TeacherFeatures(nn.Module):
    """uint8 images (B, 3, h, w) -> the classifier trunk's pooled embedding (B, E): the Frechet distance's feature."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = copy.deepcopy(trunk)  # its own copy: torchmetrics casts its feature network to float64
        self.num_features = int(trunk(torch.zeros(1, 3, 64, 64)).shape[-1])  # E (torchmetrics asks for it)

    def forward(self, images: Tensor) -> Tensor:
        dtype = next(self.trunk.parameters()).dtype
        return self.trunk(images.to(dtype) / 127.5 - 1.0)  # [0, 255] -> [-1, 1] (tinyworld.to_tensor's scale)


class Judge:
    """Classifier accuracy ("teacher_accuracy", as results.json names it) and Frechet distance of the classifier's
    embeddings, of image sets against one reference set."""

    def __init__(self, reference: np.ndarray, classifier_dir: str | None = None, batch_size: int = 256):
        self.trunk, self.head = load_shape_classifier(classifier_dir)
        self.batch_size = batch_size
        self.fid = build_fid(feature=TeacherFeatures(self.trunk))
        self.fid.reset_real_features = False  # the reference statistics are computed once, kept across calls
        for chunk in self._chunks(reference):
            self.fid.update(chunk, real=True)
        self.reference_count = len(reference)

    def _chunks(self, images: np.ndarray):
        """uint8 (B, h, w, 3) -> uint8 tensors (b, 3, h, w) of at most batch_size images."""
        for i in range(0, len(images), self.batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch_size])).permute(0, 3, 1, 2)

    @torch.no_grad()
    def classify(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (B, h, w, 3) -> the classifier's class (B,)."""
        out = [self.head(self.trunk(to_tensor(images[i : i + self.batch_size]))).argmax(1)
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict:
        """uint8 images (B, h, w, 3) meant to show classes ``labels`` (B,) -> accuracy and Frechet distance."""
        hits = self.classify(images) == np.asarray(labels)
        self.fid.reset()
        for chunk in self._chunks(images):
            self.fid.update(chunk, real=False)
        per_class = {name: float(hits[labels == k].mean()) for k, name in enumerate(CLASSES) if (labels == k).any()}
        return {"teacher_accuracy": float(hits.mean()), "per_class_accuracy": per_class,
                "frechet": float(self.fid.compute()), "count": len(images)}


@torch.no_grad()
def reconstruct(tokenizer, images: np.ndarray, depths: int | None = None, batch_size: int = 128) -> np.ndarray:
    """uint8 images (B, h, w, 3) -> the tokenizer's reconstructions from their first ``depths`` pixel depths
    (default: all of them), uint8 (B, h, w, 3)."""
    out = []
    for i in range(0, len(images), batch_size):
        pixel, _ = tokenizer.encode(to_tensor(images[i : i + batch_size]))  # (b, H, W, D_pix)
        out.append(to_uint8(tokenizer.decode(pixel, depths=depths), channels_last=True).numpy())
    return np.concatenate(out)


def reconstruction_ceiling(judge: Judge, tokenizer, start: int, count: int, depths: tuple[int, ...] = ()) -> dict:
    """The figures a perfect generator through this tokenizer would get, and those of the real images themselves.

    Held-out images start .. start+count-1 (disjoint from the reference set): their reconstructions judged like
    generated ones ("reconstructions"; "reconstructions_depth{d}" from the first d pixel depths for each d in
    ``depths``), and the originals too ("originals": the Frechet distance between two
    real samples of the same size, the floor set by sampling noise).
    """
    images, labels = held_out_images(start, count)
    out = {"reconstructions": judge(reconstruct(tokenizer, images), labels), "originals": judge(images, labels),
           "images": f"eval {start}..{start + count - 1}"}
    for d in depths:  # the ceiling of a generator that models only the first d pixel depths
        out[f"reconstructions_depth{d}"] = judge(reconstruct(tokenizer, images, d), labels)
    return out
