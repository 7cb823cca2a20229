"""Captioned training batches of the tiny world: what the teacher (a tiny SigLIP) learns from, one step at a time.

    pool = CaptionedPool(*draw_pool(49152, "train", workers=2))   # images, attribute values, caption plans
    batch = pool.batch(idx, generator, augment=True, prompts=True)

A batch holds images (turned by ``dihedral`` when augmenting; the captions' position words turn with them), one
or more captions of each, optional counterfactual captions (one named attribute changed: false of the image) and
the one-attribute prompts, all as word ids, plus the attribute codes of images and texts that the sigmoid loss
(``losses/siglip.py``) reads to decide which pairs match.
"""

from __future__ import annotations

import numpy as np
import torch

from dualtoken_lite.tinyworld.captions import (
    CAPTIONS_PER_IMAGE,
    CLASSIFIED,
    FRAMES,
    attribute_values,
    claim_code,
    counterfactual,
    image_code,
    one_attribute_caption,
    plan_captions,
    render,
    turn_values,
)
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.vocabulary import PAD, VOCABULARY


def dihedral(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Each image (B, 3, h, w) under its code (B,) in 0..7: code % 4 quarter turns (torch.rot90 over h, w), then a
    left-right mirror when code >= 4. The shape classes are symmetric under them; positions move (captions.py)."""
    out = images.clone()
    for code in range(8):
        sel = codes == code
        if sel.any():
            x = torch.rot90(images[sel], code % 4, dims=(2, 3))
            out[sel] = x.flip(3) if code >= 4 else x
    return out


def draw_pool(count: int, split: str = "train", workers: int = 1) -> tuple[np.ndarray, list[dict]]:
    """Samples 0 .. count-1 of a split (images uint8 (B, h, w, 3), descriptions), drawn in ``workers`` processes."""
    chunk = 2048
    jobs = [(s, min(chunk, count - s), split) for s in range(0, count, chunk)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(make_samples, jobs)
    else:
        parts = [make_samples(*job) for job in jobs]
    return np.concatenate([p[0] for p in parts]), [m for p in parts for m in p[1]]


class CaptionedPool:
    """Drawn images with their attribute values and caption plans; ``batch`` makes one training batch."""

    def __init__(self, images: np.ndarray, metas: list[dict]):
        self.images = torch.from_numpy(images)  # (N, h, w, 3) uint8
        self.values = [attribute_values(m) for m in metas]
        self.plans = [plan_captions(m) for m in metas]

    def __len__(self) -> int:
        return len(self.values)

    def batch(self, idx: torch.Tensor, generator: torch.Generator, augment: bool, captions: int = 1,
              hard_negatives: int = 0, full_caption: bool = False, prompts: bool = False) -> dict:
        """Images (B, 3, h, w) in [-1, 1] (turned when ``augment``), ``captions`` distinct captions of each as ids
        (T, L) with their owners (T,), and the attribute codes of the images (B, F) and of the captions (T, F) that
        decide which pairs match. ``hard_negatives`` appends that many counterfactuals per caption (owner -1);
        ``prompts`` appends the 23 one-attribute prompts (owner -1, marked in "keyed": the keys alone decide them)."""
        B = len(idx)
        order = torch.rand(B, CAPTIONS_PER_IMAGE, generator=generator)
        if full_caption:
            order[:, 0] = -1.0  # caption 0 (it names everything nameable) comes first
        slots = order.argsort(1)[:, :captions]  # (B, captions)
        codes = torch.randint(0, 8, (B,), generator=generator) if augment else torch.zeros(B, dtype=torch.long)
        images = to_tensor(self.images[idx].numpy())  # (B, 3, h, w)
        if augment:
            images = dihedral(images, codes)
        values = [turn_values(self.values[i], int(c)) for i, c in zip(idx.tolist(), codes)]
        plans = [(v, self.plans[i][int(s)]) for v, i, row in zip(values, idx.tolist(), slots) for s in row]
        image_keys = torch.from_numpy(np.stack([image_code(v) for v in values]))  # (B, F)
        texts = [render(v, plan) for v, plan in plans]
        owners = torch.arange(B).repeat_interleave(captions)
        if hard_negatives:
            rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
            changed = [rng.permutation(plan.named)[:hard_negatives] for _, plan in plans]
            negatives = [counterfactual(v, plan, rng, a) for (v, plan), names in zip(plans, changed) for a in names]
            texts += negatives
            owners = torch.cat([owners, torch.full((len(negatives),), -1)])
        if prompts:  # every attribute value, named alone in a random wording: true of every image that has it
            frames = torch.randint(0, len(FRAMES), (sum(len(w) for w in CLASSIFIED.values()),), generator=generator)
            words = [(a, w) for a, values in CLASSIFIED.items() for w in values]
            texts += [one_attribute_caption(a, w, int(f)) for (a, w), f in zip(words, frames)]
            owners = torch.cat([owners, torch.full((len(words),), -1)])
        tokens = VOCABULARY(texts)  # (T, CONTEXT_LENGTH)
        tokens = tokens[:, : int((tokens != PAD).sum(1).max())]  # padding past the longest caption changes nothing
        keyed = torch.zeros(len(texts), dtype=torch.bool)  # (T,): the prompts, whose pairs the keys alone decide
        if prompts:
            keyed[-len(words):] = True
        return {"images": images, "texts": texts, "tokens": tokens,
                "owners": owners, "keyed": keyed,
                "image_keys": image_keys,
                "text_keys": torch.from_numpy(np.stack([claim_code(t) for t in texts]))}
