"""The tiny world's first teacher: an 8-way shape classifier (the tiny ViT trunk and a linear class head).

It was trained on the shape labels alone, before the teacher became a tiny SigLIP (tinyworld/teacher.py), and it
ships in ``data/shape_classifier/`` for notebook 03's lesson: a teacher that learned only shapes has learned that
colour does not matter, and a tokenizer distilled from it inherits that. ``benchmarks/colour_sanity_tower.py`` reads it
for the same comparison.

    trunk, head = load_shape_classifier()      # trunk: (B, 3, 64, 64) in [-1, 1] -> (B, C); head: (B, C) -> (B, 8)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from dualtoken_lite.model.backbone import build_tiny_trunk
from dualtoken_lite.model.config import BackboneConfig
from dualtoken_lite.settings import from_dict
from dualtoken_lite.tinyworld.paths import SHAPE_CLASSIFIER_DIR


def load_shape_classifier(folder: str | os.PathLike | None = None) -> tuple[nn.Module, nn.Linear]:
    """The shape classifier (default: ``data/shape_classifier/``) as (trunk, head), frozen, in eval mode, float32."""
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
