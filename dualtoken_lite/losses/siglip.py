"""SigLIP's pairwise sigmoid loss, on one process or across ranks (Zhai et al. 2023, arXiv 2303.15343, eq. 1).

Every image-text pair of a batch is its own binary question, "do these two belong together?":

    logits_ij = t * <x_i, y_j> + b                 x, y unit-norm embeddings, t = exp(t'), learnable t' and b
    L = -1/|B| sum_i sum_j log sigmoid(z_ij * logits_ij),   z_ij = +1 for a matching pair, -1 otherwise

initialised at t' = log 10, b = -10 (the paper's values: with many more negatives than positives, the bias starts
where almost every pair is a "no"). Unlike the softmax loss, no normalisation over the batch is needed, so across
ranks each process scores its own images against every rank's texts, passing text embeddings around a ring,
exactly as open_clip's ``SigLipLoss`` does (its "shift" exchange, whose gradients flow back to the sender).

**Which pairs match.** SigLIP's z is the identity matrix: image i matches text i only. A caption that names a few
attributes ("a star") is true of other images of the batch too, and calling those pairs negatives teaches the
model to tell apart what the text cannot. Given ``keys``, a pair matches when every field of the text's key is
-1 (the text is silent) or equals the image's field: the caption is true of that image. Without keys the loss is
open_clip's (tests check both, on one process and on two).

open_clip's ``SigLipLoss`` has no way to take a label matrix, so this module keeps its exchange (and uses its
``neighbour_exchange*`` functions) and adds the keys, which travel around the ring beside the text embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.loss import neighbour_exchange, neighbour_exchange_with_grad
from torch import Tensor, nn

INIT_LOGIT_SCALE = math.log(10.0)  # t' (t = exp t' = 10), SigLIP's initialisation
INIT_LOGIT_BIAS = -10.0  # b, SigLIP's initialisation
MATCHES = ("positive", "ignore")  # what a caption true of another image of the batch is to that image


def keys_match(image_keys: Tensor, text_keys: Tensor) -> Tensor:
    """Which texts are true of which images: image keys (I, F), text keys (T, F) -> (I, T) bool.

    A text is true of an image when each of its fields is -1 (not named) or equal to the image's field.
    """
    t, i = text_keys[None, :, :], image_keys[:, None, :]
    return ((t == i) | (t < 0)).all(-1)


def keys_undecided(image_keys: Tensor, text_keys: Tensor) -> Tensor:
    """Texts that may or may not be true of an image: they name a field the image does not know (-1 in its key)
    and contradict none that it knows. (I, F), (T, F) -> (I, T) bool."""
    t, i = text_keys[None, :, :], image_keys[:, None, :]
    contradicted = ((t >= 0) & (i >= 0) & (t != i)).any(-1)
    return ((t >= 0) & (i < 0)).any(-1) & ~contradicted


def pair_labels(n_images: int, n_texts: int, device, dtype, image_keys: Tensor | None = None,
                text_keys: Tensor | None = None, owners: Tensor | None = None, matches: str = "positive",
                keyed: Tensor | None = None) -> Tensor:
    """z (I, T): +1 for matching pairs, -1 for the rest, 0 for pairs left out of the loss.

    ``owners`` (T,): the image each text was written for (None: another rank's texts, no image here). Without
    keys: a text matches its own image only (SigLIP). With keys, a text true of an image other than its own is a
    positive (``matches="positive"``) or left out (``matches="ignore"``): never a negative. ``keyed`` (T,) bool
    marks texts written for no image in particular (a class prompt such as "a star"): their pairs are decided by
    the keys alone, +1 where the text is true of the image and -1 where it is false, whatever ``matches`` says.
    """
    own = torch.zeros(n_images, n_texts, dtype=torch.bool, device=device)
    if owners is not None:
        own = owners[None, :] == torch.arange(n_images, device=device)[:, None]
    z = own.to(dtype) * 2 - 1
    if image_keys is not None and text_keys is not None:
        other = keys_match(image_keys, text_keys) & ~own  # true of the image, but another image's caption
        z = torch.where(other, 1.0 if matches == "positive" else 0.0, z)
        z = torch.where(keys_undecided(image_keys, text_keys) & ~own, 0.0, z)  # unknown either way: left out
        if keyed is not None:
            z = torch.where(keyed[None, :], keys_match(image_keys, text_keys).to(dtype) * 2 - 1, z)
    return z


def sigmoid_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor,
                 labels: Tensor) -> Tensor:
    """-sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)) / I over the pairs with z_ij != 0, for unit-norm (I, E) and
    (T, E) features, t = logit_scale."""
    logits = logit_scale * image_features @ text_features.T + logit_bias  # (I, T)
    return -(F.logsigmoid(labels * logits) * (labels != 0)).sum() / image_features.shape[0]


class SigmoidLoss(nn.Module):
    """The sigmoid loss of this rank's images against the texts of every rank (a ring exchange, like open_clip's)."""

    def __init__(self, rank: int = 0, world_size: int = 1, matches: str = "positive"):
        super().__init__()
        if matches not in MATCHES:
            raise ValueError(f"matches={matches!r}: choose one of {MATCHES}")
        self.rank, self.world_size, self.matches = rank, world_size, matches

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor,
                image_keys: Tensor | None = None, text_keys: Tensor | None = None, owners: Tensor | None = None,
                keyed: Tensor | None = None) -> Tensor:
        """Loss of unit-norm image (B, E) and text (T, E) features. ``owners`` (T,): the image each text belongs to
        (default: text i is image i's, T = B); keys (B, F) and (T, F) decide which other pairs match; ``keyed`` (T,)
        bool: texts whose every pair the keys decide (``pair_labels``)."""
        if keyed is not None and text_keys is None:
            raise ValueError("keyed texts need image_keys and text_keys to decide their pairs")
        if (image_keys is None) != (text_keys is None):
            raise ValueError("give both image_keys and text_keys, or neither")
        B, T = image_features.shape[0], text_features.shape[0]
        if owners is None:
            if T != B:
                raise ValueError(f"{B} images and {T} texts: give each text's image (owners) when they differ")
            owners = torch.arange(B, device=image_features.device)
        labels = pair_labels(B, T, image_features.device, image_features.dtype, image_keys, text_keys, owners,
                             matches=self.matches, keyed=keyed)
        loss = sigmoid_loss(image_features, text_features, logit_scale, logit_bias, labels)
        if self.world_size == 1:
            return loss
        right, left = (self.rank + 1) % self.world_size, (self.rank - 1) % self.world_size
        texts, keys = text_features, text_keys
        marks = keyed.to(torch.int64) if keyed is not None else None  # travels as integers (gloo sends no bool)
        for _ in range(self.world_size - 1):  # the texts of rank - 1, rank - 2, ... in turn
            texts = neighbour_exchange_with_grad(left, right, texts)
            if keys is not None:
                keys = neighbour_exchange(left, right, keys)
            if marks is not None:
                marks = neighbour_exchange(left, right, marks)
            labels = pair_labels(B, texts.shape[0], image_features.device, image_features.dtype, image_keys, keys,
                                 matches=self.matches, keyed=None if marks is None else marks.bool())
            loss = loss + sigmoid_loss(image_features, texts, logit_scale, logit_bias, labels)
        return loss
