"""Linear probes of a frozen tower, and the teacher card's figures (docs/method.md §9; docs/tiny_recipe.md §3).

A probe is a linear read-out fitted on training images and scored on held-out ones: it says what a layer keeps in a
form a linear map can use. Two, with their settings fixed here so that every tower is measured the same way:

    patch_probe(trunk, ...)      each token after block l -> its own 8 x 8 RGB patch (ridge regression);
                                 PSNR, luma and chroma (dB) of the re-assembled images: how much colour survives
    attribute_probe(...)         the pooled embedding -> an attribute's class (multinomial logistic regression):
                                 a supervised ceiling beside each zero-shot figure

    figures = measure_teacher("data/teacher")     # everything a teacher card states

Settings (chosen once, on training images and eval images 512-1023; every figure is reported on eval images 0-511):
``PATCH_TRAIN`` training images and ridge ``PATCH_RIDGE`` x the mean diagonal of X^T X for the patch probe;
``ATTRIBUTE_TRAIN`` training images and L2 strength ``ATTRIBUTE_L2`` for the attribute probe.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dualtoken_lite.evaluation.metrics import luma_chroma_psnr, psnr
from dualtoken_lite.evaluation.zero_shot import (
    attribute_accuracy,
    attribute_heads,
    attribute_labels,
    caption_retrieval,
)
from dualtoken_lite.model.backbone import VisionTower
from dualtoken_lite.model.config import BackboneConfig
from dualtoken_lite.tinyworld.captions import (
    CLASSIFIED,
    attribute_values,
    claim_code,
    image_code,
    sample_captions,
    true_of,
)
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.vocabulary import VOCABULARY

REPORTED = (0, 512)  # eval images (start, count) every card figure is measured on
PATCH_TRAIN = 1024  # training images (train split 0..) the patch probe is fitted on
PATCH_RIDGE = 1e-3  # ridge strength of the patch probe, x the mean diagonal of X^T X
ATTRIBUTE_TRAIN = 4096  # training images (train split 0..) the attribute probe is fitted on
ATTRIBUTE_L2 = 1e-4  # L2 penalty of the attribute probe (on unit-norm embeddings)


def tower_of(trunk) -> VisionTower:
    """A timm trunk wrapped in the stages the tokenizer uses (embed, blocks, pool), its config read off the trunk."""
    size, grid = trunk.patch_embed.img_size[0], trunk.patch_embed.grid_size[0]
    cfg = BackboneConfig(arch="probe", image_size=size, patch_size=size // grid, width=trunk.embed_dim,
                         layers=len(trunk.blocks), heads=trunk.blocks[0].attn.num_heads)
    return VisionTower(cfg, trunk=trunk)


@torch.no_grad()
def hidden_states(trunk, images: Tensor, batch: int = 256) -> list[Tensor]:
    """The tokens (B, N, C) after the patch embedding (index 0) and after each block l = 1..L (index l)."""
    tower = tower_of(trunk)
    parts = []
    for i in range(0, len(images), batch):
        x = tower.embed(images[i : i + batch])
        states = [x]
        for layer in range(1, tower.depth + 1):
            x = tower.run_blocks(x, layer, layer)
            states.append(x)
        parts.append(states)
    return [torch.cat(layer) for layer in zip(*parts)]


def ridge_fit(x: Tensor, y: Tensor, strength: float) -> Tensor:
    """W minimising ||[x 1] W - y||^2 + strength * mean(diag X^T X) * ||W||^2: x (M, F), y (M, T) -> (F + 1, T)."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1).double()
    gram = x.T @ x
    reg = strength * gram.diagonal().mean()
    return torch.linalg.solve(gram + reg * torch.eye(len(gram), dtype=gram.dtype), x.T @ y.double()).float()


def patches(images: Tensor, p: int) -> Tensor:
    """(B, 3, h, w) -> (B, N, p * p * 3), raster order like the tokens."""
    return F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)


def unpatch(tokens: Tensor, p: int, size: int) -> Tensor:
    """(B, N, p * p * 3) -> (B, 3, size, size): the inverse of ``patches``."""
    return F.fold(tokens.transpose(1, 2), output_size=size, kernel_size=p, stride=p)


@torch.no_grad()
def patch_probe(trunk, train_images: Tensor, eval_images: Tensor, layers: list[int] | None = None,
                strength: float = PATCH_RIDGE) -> dict[int, dict[str, float]]:
    """From each token after layer l (0 = patch embedding) to its own RGB patch: mean PSNR / luma / chroma (dB).

    Images (B, 3, h, w) in [-1, 1]; the ridge is fitted on ``train_images`` and scored on ``eval_images``.
    """
    p = trunk.patch_embed.patch_size[0]
    size = eval_images.shape[-1]
    h_train, h_eval = hidden_states(trunk, train_images), hidden_states(trunk, eval_images)
    t_train = patches(train_images, p)  # (B, N, p p 3) targets in [-1, 1]
    out = {}
    for layer in layers if layers is not None else range(len(h_train)):
        w = ridge_fit(h_train[layer].flatten(0, 1), t_train.flatten(0, 1), strength)
        tokens = torch.cat([h_eval[layer], torch.ones(*h_eval[layer].shape[:2], 1)], dim=-1) @ w  # (B, N, p p 3)
        recon = unpatch(tokens, p, size).clamp(-1, 1)
        luma, chroma = luma_chroma_psnr(recon, eval_images)
        out[layer] = {"psnr": psnr(recon, eval_images).mean().item(), "luma": luma.mean().item(),
                      "chroma": chroma.mean().item()}
    return out


def attribute_probe(train_x: Tensor, train_y, eval_x: Tensor, eval_y, classes: int, l2: float = ATTRIBUTE_L2,
                    iterations: int = 200) -> float:
    """Multinomial logistic regression on unit-norm embeddings (train (M, E) -> labels), top-1 on eval."""
    torch.manual_seed(0)
    x, xe = F.normalize(train_x.float(), dim=-1), F.normalize(eval_x.float(), dim=-1)
    y = torch.as_tensor(train_y)
    w = torch.zeros(x.shape[1] + 1, classes, requires_grad=True)
    xb = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.cat([xe, torch.ones(len(xe), 1)], dim=1) @ w).argmax(-1)
    return float((pred == torch.as_tensor(eval_y)).float().mean())


@torch.no_grad()
def embed(model, images: np.ndarray, batch: int = 256) -> Tensor:
    """The teacher's pooled image embeddings (B, C) of uint8 images (B, h, w, 3)."""
    return torch.cat([model.encode_image(to_tensor(images[i : i + batch])) for i in range(0, len(images), batch)])


@torch.no_grad()
def measure_teacher(folder=None, old_trunk=None) -> dict:
    """Every figure of a teacher card, on eval images 0-511: zero-shot per attribute beside its probe ceiling,
    image -> caption R@1 with chance, and the patch probe at every depth."""
    from dualtoken_lite.tinyworld.teacher import load_teacher

    model = load_teacher(folder)
    eval_images, eval_metas = make_samples(*REPORTED, "eval")
    train_images, train_metas = make_samples(0, max(ATTRIBUTE_TRAIN, PATCH_TRAIN), "train")
    pooled, train_pooled = embed(model, eval_images), embed(model, train_images[:ATTRIBUTE_TRAIN])
    labels, train_labels = attribute_labels(eval_metas), attribute_labels(train_metas[:ATTRIBUTE_TRAIN])
    zero_shot = attribute_accuracy(pooled, labels, attribute_heads(model))
    with torch.enable_grad():
        probe = {a: attribute_probe(train_pooled, train_labels[a], pooled, labels[a], len(CLASSIFIED[a]))
                 for a in CLASSIFIED}
    captions = [sample_captions(m)[0] for m in eval_metas]  # each image's full caption
    truth = true_of(np.stack([claim_code(c) for c in captions]),
                    np.stack([image_code(attribute_values(m)) for m in eval_metas]))  # (I, T)
    r1, chance = caption_retrieval(pooled, model.encode_text(VOCABULARY(captions)), truth)
    colour = patch_probe(model.trunk, to_tensor(train_images[:PATCH_TRAIN]), to_tensor(eval_images))
    return {"images": f"eval {REPORTED[0]}-{sum(REPORTED) - 1}",
            "zero_shot": zero_shot, "probe": probe,
            "retrieval": {"r1": r1, "chance": chance, "captions": "each image's first (full) caption"},
            "patch_probe": {str(k): v for k, v in colour.items()},
            "settings": {"patch_train": PATCH_TRAIN, "patch_ridge": PATCH_RIDGE, "attribute_train": ATTRIBUTE_TRAIN,
                         "attribute_l2": ATTRIBUTE_L2}}
