"""The vision tower: a timm ``VisionTransformer`` trunk in SigLIP's layout (no class token, MAP pooling head).

Every preset uses this one layout. The paper presets take open_clip's SigLIP towers, whose ``visual.trunk`` is
a timm VisionTransformer; ``tiny`` builds the same class small (``build_tiny_trunk``). Two reasons:
    * one tapping path at every scale: embed -> block 1 -> ... -> block L -> final norm -> MAP head, with the
      hidden state after any block (1-indexed, as docs/method.md §2 counts them) available to the branches;
    * no class token: every token is a grid position that goes through a codebook, so no extra token can carry
      unquantized information past the semantic layer to the pooled embedding.

``VisionTower`` runs the trunk in those named stages (``embed``, ``run_blocks``, ``pool``) so the model can
replace the hidden state after the semantic layer (docs/method.md §2). ``teacher_targets`` runs a frozen trunk the same
way for the semantic distillation loss (docs/method.md §3).

Activation (``BackboneConfig.activation``): SigLIP was trained with the tanh approximation of GELU (transformers'
``gelu_pytorch_tanh``), but timm and open_clip build its towers with exact GELU; ``set_activation`` gives every
MLP of the trunk (blocks and MAP head) the configured one, so a tower runs the network its weights were trained as.

Weights (``BackboneConfig.pretrained``): None or ``"random"`` = random init (``"random"`` says so on purpose:
the paper-scale training command refuses None); an open_clip tag such as ``"webli"`` (needs the weights in the
Hugging Face cache or a network); a transformers SigLIP / SigLIP2 checkpoint, ``"hf:<repo id>"`` from the Hugging
Face cache or its local folder (model/hf_siglip.py); or a local file/folder of weights (a trunk state dict, an
open_clip model checkpoint, or a dualtoken_lite checkpoint folder), loaded strictly.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from dualtoken_lite.model.config import RANDOM_WEIGHTS, BackboneConfig
from dualtoken_lite.model.hf_siglip import is_hf_spec, load_hf_trunk
from dualtoken_lite.settings import ConfigError

# Key prefixes under which a trunk's weights appear in the checkpoints we accept (tried in this order).
TRUNK_PREFIXES = ("", "trunk.", "visual.trunk.", "module.visual.trunk.", "encoder.trunk.")
# File names looked up inside a weights folder (open_clip / HF hub layouts, and our own checkpoints).
WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
    "teacher.safetensors",  # the tiny world's teacher (`python -m dualtoken_lite teacher`): its trunk.* tensors
)


def set_activation(trunk: VisionTransformer, activation: str) -> VisionTransformer:
    """Exact ("gelu") or tanh-approximate ("gelu_tanh") GELU in every MLP of the trunk: its blocks and MAP head."""
    for module in trunk.modules():
        if isinstance(module, Mlp):
            module.act = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
    return trunk


def trunk_activation(trunk: VisionTransformer) -> str:
    """The GELU the trunk's MLPs run: "gelu_tanh", "gelu", or the class name of anything else."""
    act = trunk.blocks[0].mlp.act
    if type(act).__name__ == "GELUTanh" or getattr(act, "approximate", None) == "tanh":
        return "gelu_tanh"
    return "gelu" if type(act).__name__ == "GELU" else type(act).__name__


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
        act_layer=cfg.activation,
    )


def open_clip_vision_cfg(arch: str) -> dict:
    """open_clip's vision config of ``arch``, checked to be a SigLIP-layout timm trunk with a MAP head."""
    import open_clip

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        sig = [n for n in open_clip.list_models() if "SigLIP" in n]
        raise ConfigError(f"backbone.arch={arch!r} is not an open_clip model; use 'tiny' or one of {sig}")
    vision = model_cfg["vision_cfg"]
    if not vision.get("timm_model_name") or vision.get("timm_pool") != "map":
        raise ConfigError(
            f"backbone.arch={arch!r} is not a timm trunk with a MAP pooling head (SigLIP layout); "
            "dualtoken_lite taps SigLIP towers only, e.g. 'ViT-SO400M-14-SigLIP-384'"
        )
    return model_cfg


def check_trunk_matches(trunk: VisionTransformer, cfg: BackboneConfig) -> None:
    """Raise ConfigError when the built trunk disagrees with the config's width, depth or grid."""
    got = {
        "width": trunk.embed_dim,
        "layers": len(trunk.blocks),
        "heads": trunk.blocks[0].attn.num_heads,
        "grid": trunk.patch_embed.grid_size[0],
        "activation": trunk_activation(trunk),
    }
    want = {"width": cfg.width, "layers": cfg.layers, "heads": cfg.heads, "grid": cfg.grid,
            "activation": cfg.activation}
    wrong = {k: (want[k], got[k]) for k in got if got[k] != want[k]}
    if wrong:
        detail = ", ".join(f"{k}: config {a} vs {cfg.arch} {b}" for k, (a, b) in wrong.items())
        raise ConfigError(f"backbone config disagrees with the {cfg.arch!r} tower ({detail}); fix the preset "
                          "(e.g. --model.backbone.activation gelu_tanh for a transformers SigLIP tower)")
    if trunk.cls_token is not None or trunk.attn_pool is None:
        raise ConfigError(f"{cfg.arch!r}: the trunk must have no class token and a MAP head (SigLIP layout)")


def build_open_clip_trunk(arch: str, pretrained: str | None) -> VisionTransformer:
    """open_clip's SigLIP ``visual.trunk``: random (vision tower only) or with an open_clip pretrained tag."""
    import open_clip
    from open_clip.model import _build_vision_tower

    model_cfg = open_clip_vision_cfg(arch)
    if pretrained is None:  # build only the vision tower: exactly create_model(arch).visual, minus the text tower
        return _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"]).trunk
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ConfigError(
            f"backbone.pretrained={pretrained!r} is neither an existing local path nor an open_clip tag of "
            f"{arch!r} (tags: {tags})"
        )
    try:
        return open_clip.create_model(arch, pretrained=pretrained).visual.trunk
    except RuntimeError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        raise RuntimeError(
            f"could not load open_clip weights {arch!r} / pretrained={pretrained!r}"
            f"{' (HF_HUB_OFFLINE=1: no download attempted)' if offline else ''}. Either populate the Hugging "
            f"Face cache on a machine with internet (open_clip.create_model({arch!r}, pretrained={pretrained!r})) "
            "or set backbone.pretrained to a local weights file or folder. Cause: " + str(err)
        ) from err


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a .safetensors / torch checkpoint file, or of the known weight file inside a folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no weights file in folder {path}; expected one of {WEIGHT_FILES}")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_trunk_weights(trunk: VisionTransformer, path: str | os.PathLike) -> VisionTransformer:
    """Load a trunk's weights strictly from ``path``, whichever prefix they are stored under (TRUNK_PREFIXES)."""
    state = read_state_dict(path)
    want = set(trunk.state_dict())
    best, best_hits = "", -1
    for prefix in TRUNK_PREFIXES:
        hits = len(want & {k[len(prefix):] for k in state if k.startswith(prefix)})
        if hits > best_hits:
            best, best_hits = prefix, hits
    sub = {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    missing, unexpected = sorted(want - set(sub)), sorted(set(sub) - want)
    if missing or (unexpected and best == ""):
        raise RuntimeError(
            f"weights in {path} do not fit the {type(trunk).__name__} trunk (prefix {best!r}): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
        )
    trunk.load_state_dict({k: sub[k] for k in want}, strict=True)  # shape mismatches raise here
    return trunk


def build_trunk(cfg: BackboneConfig) -> VisionTransformer:
    """The configured trunk with its weights (random, open_clip tag, transformers SigLIP, local path), checked."""
    spec = None if cfg.pretrained in (None, RANDOM_WEIGHTS) else cfg.pretrained
    if is_hf_spec(spec):  # built from the checkpoint's own config (its GELU too), then compared with ours below
        trunk = load_hf_trunk(spec, cfg.image_size)
        check_trunk_matches(trunk, cfg)
        return trunk
    local = spec is not None and Path(spec).exists()
    if cfg.arch == "tiny":
        if spec is not None and not local:
            raise ConfigError(f"backbone.pretrained={spec!r}: no such file; the tiny trunk loads local paths only")
        trunk = build_tiny_trunk(cfg)
    else:
        trunk = set_activation(build_open_clip_trunk(cfg.arch, None if local else spec), cfg.activation)
    if local:
        load_trunk_weights(trunk, spec)
    check_trunk_matches(trunk, cfg)
    return trunk


def check_images(images: Tensor, image_size: int) -> None:
    """Raise ValueError unless images is a float tensor (B, 3, image_size, image_size)."""
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (B, 3, {image_size}, {image_size}) in [-1, 1], "
                         f"got {type(images).__name__} {getattr(images, 'dtype', '')}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, h, w) with 3 RGB channels, got {tuple(images.shape)}; "
                         "convert grey/RGBA images to RGB first (dualtoken_lite.datasets.images.preprocess does)")
    if tuple(images.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"images are {tuple(images.shape[-2:])} pixels but this model takes "
                         f"{image_size}x{image_size}; resize and center-crop them first (dualtoken_lite.datasets.images.preprocess)")


def allowed_attention_kernels() -> list[SDPBackend]:
    """The scaled-dot-product attention kernels torch may choose from right now (``sdpa_kernel`` narrows them)."""
    flags = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
             SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
             SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled(),
             SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled()}
    return [kernel for kernel, allowed in flags.items() if allowed]


def recompute_with_same_attention_kernels():
    """Gradient checkpointing's ``context_fn``: the block's recomputation in backward may use only the attention
    kernels its forward could. The backward runs outside the forward's ``sdpa_kernel`` context (the CPU's bf16
    step allows only the math kernel, training/precision.py); another kernel would save other tensors, which
    checkpoint refuses."""
    return nullcontext(), sdpa_kernel(allowed_attention_kernels())


class VisionTower(nn.Module):
    """A timm SigLIP-layout trunk run in named stages so its hidden states can be tapped and replaced."""

    def __init__(self, cfg: BackboneConfig, trunk: VisionTransformer | None = None):
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk if trunk is not None else build_trunk(cfg)

    @property
    def depth(self) -> int:
        """Number of transformer blocks L."""
        return len(self.trunk.blocks)

    def embed(self, images: Tensor) -> Tensor:
        """images (B, 3, h, w) -> patch tokens with position embeddings (B, N, C)."""
        check_images(images, self.cfg.image_size)
        t = self.trunk
        return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(images))))

    def run_blocks(self, x: Tensor, first: int, last: int) -> Tensor:
        """Blocks first..last (1-indexed, inclusive) on x (B, N, C); recomputed in backward if configured."""
        for block in self.trunk.blocks[first - 1 : last]:
            if self.cfg.grad_checkpointing and self.training and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False, context_fn=recompute_with_same_attention_kernels)
            else:
                x = block(x)
        return x

    def pool(self, x: Tensor) -> Tensor:
        """Hidden state after the last block (B, N, C) -> final norm -> MAP head -> pooled embedding (B, E)."""
        return self.trunk.forward_head(self.trunk.norm(x))


def tapped_forward(tower: VisionTower, images: Tensor, layers: list[int]) -> tuple[dict[int, Tensor], Tensor]:
    """The unmodified tower: hidden states after each of ``layers`` (1-indexed) and the pooled embedding."""
    x, taps, done = tower.embed(images), {}, 0
    for layer in sorted(set(layers)):
        if not 1 <= layer <= tower.depth:
            raise ValueError(f"layer {layer} is outside blocks 1..{tower.depth}")
        x = tower.run_blocks(x, done + 1, layer)
        taps[layer], done = x, layer
    return taps, tower.pool(tower.run_blocks(x, done + 1, tower.depth))


@torch.no_grad()
def teacher_targets(teacher: VisionTransformer | VisionTower, images: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """Frozen teacher (docs/method.md §3): hidden state after ``layer`` (B, N, C) and pooled embedding (B, E), no grad."""
    if isinstance(teacher, VisionTransformer):
        size = teacher.patch_embed.img_size[0]
        grid = teacher.patch_embed.grid_size[0]
        cfg = BackboneConfig(arch="teacher", image_size=size, patch_size=size // grid,
                             width=teacher.embed_dim, layers=len(teacher.blocks))
        teacher = VisionTower(cfg, trunk=teacher)
    taps, pooled = tapped_forward(teacher, images, [layer])
    return taps[layer], pooled
