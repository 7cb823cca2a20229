"""The vision tower: a timm ``VisionTransformer`` trunk in SigLIP's layout (no class token, MAP pooling head).

Both the paper presets (open_clip's SigLIP towers, whose ``visual.trunk`` is a timm VisionTransformer) and the
``tiny`` preset use this one layout, so the same block-by-block tapping code runs at every scale.
(Placeholder: only ``build_tiny_trunk`` for now; the model work extends this module.)
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from .config import BackboneConfig


def build_tiny_trunk(cfg: BackboneConfig) -> VisionTransformer:
    """A small SigLIP-shaped ViT: patch embedding, ``cfg.layers`` blocks, final norm, MAP pooling head."""
    return VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.width,
        depth=cfg.layers,
        num_heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        class_token=False,
        no_embed_class=True,
        global_pool="map",
        num_classes=0,
    )
