"""The tiny world's teacher: the ``tiny`` backbone trained from scratch as a shape classifier (docs/method.md §9).

DualToken distils its semantic branch from a frozen, pretrained SigLIP and measures zero-shot accuracy with
SigLIP's text head (docs/method.md §3, §6). No pretrained weights reach this machine, so the tiny world has its own:
the tiny preset's trunk (a timm ViT in SigLIP's layout, ``backbone.build_tiny_trunk``) plus a linear class
head on its pooled (MAP) embedding, the stand-in for the zero-shot head. It is trained once
(``python -m dualtoken_lite teacher``, ``tools/teacher.py``) and shipped as small safetensors weights:

    trunk, head = load_teacher()                      # data/teacher/teacher.safetensors, eval mode
    logits = head(trunk(images))                      # images (B, 3, 64, 64) in [-1, 1] -> (B, classes)
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from dualtoken_lite.model.backbone import build_tiny_trunk
from dualtoken_lite.model.config import BackboneConfig
from dualtoken_lite.settings import from_dict
from dualtoken_lite.tinyworld.drawing import CLASSES, to_tensor
from dualtoken_lite.tinyworld.paths import TEACHER_DIR

WEIGHTS_FILE, CARD_FILE = "teacher.safetensors", "teacher.json"


class Teacher(nn.Module):
    """Trunk + linear head: images (B, 3, h, w) in [-1, 1] -> pooled embedding (B, C) -> logits (B, classes)."""

    def __init__(self, backbone: BackboneConfig | None = None, num_classes: int = len(CLASSES)):
        super().__init__()
        self.backbone = backbone or BackboneConfig()
        self.trunk = build_tiny_trunk(self.backbone)
        self.head = nn.Linear(self.backbone.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))  # (B, C) -> (B, classes)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray | torch.Tensor, labels, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on uint8 images (B, h, w, 3), in fp32, eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = to_tensor(np.asarray(images[i : i + batch_size]))
        correct += (model(x).argmax(1) == torch.as_tensor(labels[i : i + batch_size])).sum().item()
    model.train(was_training)
    return correct / len(images)


def load_teacher(path: str | os.PathLike | None = None) -> tuple[nn.Module, nn.Linear]:
    """The shipped (or a given folder's) teacher as (trunk, head), frozen, in eval mode.

    ``trunk(images)`` maps (B, 3, 64, 64) in [-1, 1] to the pooled embedding (B, C); ``head`` maps it to logits.
    """
    folder = path or TEACHER_DIR
    weights, card = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, CARD_FILE)
    for file in (weights, card):
        if not os.path.exists(file):
            raise FileNotFoundError(f"teacher file {file} is missing; train a teacher with `python -m dualtoken_lite "
                                    "teacher --out RUN` and give RUN/model (or copy RUN/model/teacher.* there)")
    with open(card) as f:
        info = json.load(f)
    model = Teacher(from_dict(BackboneConfig, info["backbone"]), num_classes=len(info["classes"]))
    state = {k: v.float() for k, v in load_file(weights).items()}  # stored float16, computed in float32
    model.load_state_dict(state, strict=True)  # a mismatch raises, listing the keys
    model.eval().requires_grad_(False)
    return model.trunk, model.head
