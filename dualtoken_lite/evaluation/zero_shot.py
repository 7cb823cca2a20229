"""Zero-shot classification and caption retrieval with a SigLIP text tower, at both scales (docs/method.md §6).

A zero-shot classifier is built from text alone (CLIP's recipe, SigLIP's too): each class name is put into a few
prompt templates, the text tower embeds every prompt, the unit-norm embeddings of one class are averaged and
renormalised; an image is then given the class whose embedding is most similar to its own (cosine):

    classifier[:, k] = normalize(mean_t normalize(text(template_t(name_k))))       (E, K)
    prediction       = argmax_k  normalize(pooled) @ classifier[:, k]

open_clip's ``build_zero_shot_classifier`` does exactly this for any model with ``encode_text`` and any tokenizer,
so one code path serves the paper's SigLIP (its text tower, its tokenizer, ImageNet's class names and templates,
``external.build_zero_shot_head``) and the tiny world's teacher (``TinySigLIP``, ``VOCABULARY``, and the
attributes of the tiny world's captions, one classifier per attribute):

    heads = attribute_heads(teacher)                       # {"shape": head (8), "colour": (7), "fill": (4), ...}
    accuracy = attribute_accuracy(pooled, labels, heads)   # pooled (B, C): the teacher's or a tokenizer's
    r1, chance = caption_retrieval(images, texts, truth)   # image -> caption R@1 and its chance level

The tiny world's prompts are its caption frames naming one attribute ("a red shape", "a picture of a red shape",
"there is a red shape"): the wording the teacher was trained on.
"""

from __future__ import annotations

import functools
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualtoken_lite.tinyworld.captions import (
    CLASSIFIED,
    FRAMES,
    attribute_values,
    claim_code,
    image_code,
    one_attribute_caption,
    sample_captions,
    true_of,
)
from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.shards import parse_key
from dualtoken_lite.tinyworld.vocabulary import VOCABULARY

PROMPT_FRAMES = (0, 1, 2)  # caption frames used as prompt templates (frame 3 reads like frame 0 without a position)


class ZeroShotHead(nn.Module):
    """Pooled embeddings (B, E) -> class logits (B, K): cosine similarity with per-class text embeddings."""

    def __init__(self, classifier: Tensor):
        super().__init__()
        self.register_buffer("classifier", classifier)  # (E, K), unit-norm columns (open_clip's layout)

    def forward(self, pooled: Tensor) -> Tensor:
        return F.normalize(pooled.float(), dim=-1) @ self.classifier  # (B, E) @ (E, K) -> (B, K)


def attribute_templates(attribute: str, frames: tuple[int, ...] = PROMPT_FRAMES) -> list:
    """The prompt templates of one attribute, as callables word -> prompt (open_clip's template interface)."""
    if attribute not in CLASSIFIED:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {sorted(CLASSIFIED)}")
    if not frames or not all(0 <= f < len(FRAMES) for f in frames):
        raise ValueError(f"frames {frames} must be indices into the {len(FRAMES)} caption frames")
    return [partial(one_attribute_caption, attribute, frame=f) for f in frames]


@torch.no_grad()
def build_head(model: nn.Module, tokenizer, classnames: list[str], templates: list, device="cpu") -> ZeroShotHead:
    """open_clip's zero-shot classifier of ``classnames`` x ``templates`` with ``model.encode_text``."""
    from open_clip import build_zero_shot_classifier

    was_training = getattr(model, "training", False)
    model.eval()
    classifier = build_zero_shot_classifier(model, tokenizer, classnames, templates, num_classes_per_batch=None,
                                            device=device)
    model.train(was_training)
    return ZeroShotHead(classifier.float())


def attribute_heads(model: nn.Module, tokenizer=None, frames: tuple[int, ...] = PROMPT_FRAMES,
                    attributes: tuple[str, ...] = tuple(CLASSIFIED), device="cpu") -> dict[str, ZeroShotHead]:
    """One zero-shot head per tiny-world attribute (class names = the attribute's words, in label order)."""
    tokenizer = tokenizer or VOCABULARY
    return {a: build_head(model, tokenizer, list(CLASSIFIED[a]), attribute_templates(a, frames), device)
            for a in attributes}


def attribute_labels(metas: list[dict]) -> dict[str, np.ndarray]:
    """Each classified attribute's label (index into CLASSIFIED[attribute]) of every sample description."""
    values = [attribute_values(m) for m in metas]
    return {a: np.array([words.index(v[a]) for v in values], dtype=np.int64) for a, words in CLASSIFIED.items()}


@torch.no_grad()
def attribute_accuracy(pooled: Tensor, labels: dict, heads: dict[str, nn.Module]) -> dict[str, float]:
    """Top-1 accuracy of each head on pooled embeddings (B, E) against labels {attribute: (B,)}."""
    return {a: float((head(pooled).argmax(-1).cpu() == torch.as_tensor(labels[a])).float().mean())
            for a, head in heads.items()}


@torch.no_grad()
def caption_retrieval(image_features: Tensor, text_features: Tensor, truth) -> tuple[float, float]:
    """Image -> caption retrieval: R@1 (the most similar caption is true of the image) and its chance level.

    image_features (I, E), text_features (T, E) (normalised here); truth (I, T) bool: caption t is true of image i.
    Chance is the expected R@1 of a random pick: the mean over images of the share of captions true of them.
    """
    truth = torch.as_tensor(truth)
    sims = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T  # (I, T)
    top = sims.argmax(-1)
    r1 = truth[torch.arange(len(top)), top.cpu()].float().mean().item()
    return r1, truth.float().mean(1).mean().item()


# ------------------------------------------------------------------------------------------ during evaluation
@functools.lru_cache(maxsize=65536)
def describe(split: str, index: int) -> dict:
    """The description of one tiny-world sample (redrawn once, then remembered)."""
    return make_sample(index, split)[1]


def tinyworld_descriptions(keys: list[str] | None) -> list[dict] | None:
    """The descriptions of a batch's samples from their shard keys; None unless every key is a tiny-world sample's."""
    parsed = [parse_key(k) for k in keys or []]
    if not parsed or any(p is None for p in parsed):
        return None
    return [describe(*p) for p in parsed]


class SemanticScore:
    """Accuracy of classifier heads on pooled embeddings, summed over the batches of an evaluation.

    heads        {name: (B, E) -> (B, K) logits}: one zero-shot head per attribute (tiny world) or per label set
    labels_of    batch -> {name: (B,) labels}, or None when the batch carries none
    reference    images (B, 3, h, w) -> the continuous embedding the same heads are scored on (the teacher's own)
    text         the teacher, for image -> caption retrieval of the tiny world's full captions (or None)

    ``result()``: per-head accuracy from the codes ("accuracy") and from the reference ("reference"), their means
    ("semantic_accuracy", "teacher_accuracy"), and R@1 with its chance level when ``text`` is given.
    """

    def __init__(self, heads: dict[str, nn.Module], labels_of, kind: str, reference=None, text=None):
        self.heads, self.labels_of, self.kind, self.reference, self.text = heads, labels_of, kind, reference, text
        self.correct = {n: 0 for n in heads}
        self.reference_correct = {n: 0 for n in heads}
        self.count = 0
        self.pooled, self.reference_pooled, self.metas = [], [], []

    @torch.no_grad()
    def update(self, pooled: Tensor, images: Tensor, batch: dict) -> None:
        """Score the pooled embeddings (B, E) of ``images`` (B, 3, h, w) against the batch's labels."""
        labels = self.labels_of(batch)
        if labels is None:
            return
        ref = self.reference(images) if self.reference is not None else None
        for name, head in self.heads.items():
            y = torch.as_tensor(labels[name])[: len(pooled)].to(pooled.device)
            self.correct[name] += (head(pooled).argmax(-1) == y).sum().item()
            if ref is not None:
                self.reference_correct[name] += (head(ref).argmax(-1) == y).sum().item()
        self.count += len(pooled)
        if self.text is not None:
            self.pooled.append(pooled.float().cpu())
            self.reference_pooled.append(ref.float().cpu())
            self.metas += tinyworld_descriptions(batch["key"][: len(pooled)])

    def result(self) -> dict:
        if not self.count:
            return {}
        out = {"semantic_metric": self.kind, "semantic_images": self.count,
               "semantic": {n: c / self.count for n, c in self.correct.items()}}
        out["semantic_accuracy"] = sum(out["semantic"].values()) / len(self.heads)
        if self.reference is not None:
            out["teacher_semantic"] = {n: c / self.count for n, c in self.reference_correct.items()}
            out["teacher_accuracy"] = sum(out["teacher_semantic"].values()) / len(self.heads)
        if self.text is not None:
            texts, truth = full_captions(self.metas)
            text_features = self.text.encode_text(VOCABULARY(texts))
            r1, chance = caption_retrieval(torch.cat(self.pooled), text_features, truth)
            teacher_r1, _ = caption_retrieval(torch.cat(self.reference_pooled), text_features, truth)
            out["retrieval"] = {"r1": r1, "teacher_r1": teacher_r1, "chance": chance}
        return out


def full_captions(metas: list[dict]) -> tuple[list[str], np.ndarray]:
    """Each sample's first caption (it names everything nameable) and which of them is true of which sample (I, T)."""
    texts = [sample_captions(m)[0] for m in metas]
    truth = true_of(np.stack([claim_code(t) for t in texts]), np.stack([image_code(attribute_values(m)) for m in metas]))
    return texts, truth


def tinyworld_score(teacher: nn.Module, device="cpu") -> SemanticScore:
    """Zero-shot accuracy per attribute with the teacher's text tower (and the teacher's own on the same images),
    plus caption retrieval, for batches of tiny-world samples (their attribute labels come from their keys)."""
    def labels_of(batch: dict):
        metas = tinyworld_descriptions(batch.get("key"))
        return attribute_labels(metas) if metas is not None else None

    return SemanticScore(attribute_heads(teacher, device=device), labels_of, "zero-shot",
                         reference=lambda x: teacher.encode_image(x), text=teacher)


def class_score(head: nn.Module, kind: str, reference=None) -> SemanticScore:
    """Accuracy of one head against the batches' "label" (a paper-scale zero-shot head, or a class head)."""
    return SemanticScore({"class": head}, lambda b: {"class": b["label"]} if "label" in b else None, kind, reference)
