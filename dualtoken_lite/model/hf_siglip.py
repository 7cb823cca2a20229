"""SigLIP and SigLIP2 towers saved by Hugging Face ``transformers`` -> our timm trunk (docs/method.md §2).

The released DualToken code loads its tower from ``transformers`` (SigLIP2 so400m-patch14-384); the paper used
SigLIP So400m/14-384. Both are published in the ``transformers`` layout, which holds the same numbers as our timm
trunk under other names and in three other shapes:

    transformers (prefix vision_model.)                        timm VisionTransformer (our trunk)
    embeddings.patch_embedding  conv (C, 3, p, p)              patch_embed.proj            (same)
                                Linear (C, p*p*3) [SigLIP2]                                (C, 3, p, p): unflatten
    embeddings.position_embedding.weight (N0, C)               pos_embed (1, N, C): leading 1; SigLIP2 resizes its
                                                                 sqrt(N0) grid to the trunk's grid once, here
    encoder.layers.i.self_attn.{q,k,v}_proj  3 x (C, C)        blocks.i.attn.qkv (3C, C): q, k, v stacked
    encoder.layers.i.self_attn.out_proj                        blocks.i.attn.proj
    encoder.layers.i.layer_norm{1,2}, mlp.fc{1,2}              blocks.i.norm{1,2}, mlp.fc{1,2}
    post_layernorm                                             norm
    head.probe (1, 1, C)                                       attn_pool.latent
    head.attention.in_proj_{weight,bias} (3C, C)               attn_pool.q (C, C) + attn_pool.kv (2C, C): split
    head.attention.out_proj, head.layernorm, head.mlp          attn_pool.proj, attn_pool.norm, attn_pool.mlp

``hf_to_timm`` does exactly that on a state dict (the release converter, model/release.py, reuses it for the
tower inside a DualToken checkpoint) and returns a record of every key it read. ``load_hf_trunk`` builds the trunk
from the checkpoint's own config (width, depth, heads, MLP size, GELU flavour, LayerNorm eps) and loads it
strictly. ``transformers`` is needed only to read that config (it fills in the defaults a saved config omits);
it is an optional extra: ``pip install 'dualtoken_lite[hf]'``.

SigLIP2 "NaFlex" towers (model_type ``siglip2``) see patches as flat vectors in (row, column, channel) order and
resize their 16 x 16 position grid to each image's grid; for one fixed square grid both become a plain ViT.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from dualtoken_lite.settings import ConfigError

HF_REPO_PREFIX = "hf:"  # backbone.pretrained = "hf:google/siglip2-so400m-patch14-384" -> the Hugging Face cache
HF_VISION_PREFIX = "vision_model."  # where SiglipVisionModel / SiglipModel keep the tower
SIGLIP_TYPES = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")
HF_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}  # HF -> timm names


@dataclass
class KeyMap:
    """One line of a conversion report: which source tensors became which target tensor, and how."""

    sources: tuple[str, ...]  # keys read from the source checkpoint
    target: str | None  # key written to our state dict; None = dropped
    how: str  # "renamed", or what was done: "q/k/v stacked", "split rows 0:C", "dropped: <why>", ...


def require_transformers():
    """Import ``transformers`` or say how to get it (it is the optional ``hf`` extra)."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "loading a Hugging Face SigLIP / SigLIP2 checkpoint needs the `transformers` package to read its "
            "config: pip install 'transformers>=4.40' (or pip install -e '.[hf]')"
        ) from err
    return transformers


# ------------------------------------------------------------------------------------------------ finding it
def read_hf_config_json(folder: str | os.PathLike) -> dict | None:
    """The raw config.json of a transformers SigLIP folder, or None when ``folder`` is not one."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return config if config.get("model_type") in SIGLIP_TYPES else None


def is_hf_spec(spec: str | None) -> bool:
    """True for ``hf:<repo id>`` or a local folder holding a transformers SigLIP / SigLIP2 checkpoint."""
    if spec is None:
        return False
    return spec.startswith(HF_REPO_PREFIX) or (Path(spec).is_dir() and read_hf_config_json(spec) is not None)


def resolve_hf_folder(spec: str) -> Path:
    """``hf:<repo id>`` -> its snapshot folder in the Hugging Face cache (no download with HF_HUB_OFFLINE=1)."""
    if not spec.startswith(HF_REPO_PREFIX):
        return Path(spec)
    repo = spec[len(HF_REPO_PREFIX):]
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:  # the hub raises many kinds; all mean "not available here"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        raise RuntimeError(
            f"backbone.pretrained={spec!r}: {repo} is not in the Hugging Face cache"
            f"{' and HF_HUB_OFFLINE=1 forbids a download' if offline else ''} ({type(err).__name__}). Fetch it once "
            f"on a machine with internet (huggingface-cli download {repo}), or pass the local folder instead"
        ) from err


def hf_vision_config(folder: str | os.PathLike):
    """The vision config of a transformers SigLIP folder, defaults filled in (a full SiglipModel's vision part)."""
    transformers = require_transformers()
    config = transformers.AutoConfig.from_pretrained(str(folder))
    return getattr(config, "vision_config", config)


def read_hf_weights(folder: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a transformers folder: model.safetensors, or its shards (model-0000x-of-0000y.safetensors)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder} (save the model with save_pretrained)")
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


# ------------------------------------------------------------------------------------------------ the trunk
def naflex(vision_config) -> bool:
    """SigLIP2 NaFlex towers embed flat patches with a Linear and resize a square position grid."""
    return vision_config.model_type.startswith("siglip2")


def trunk_from_hf_config(vision_config, image_size: int | None = None) -> VisionTransformer:
    """A random timm trunk shaped like the transformers tower (NaFlex towers need the ``image_size`` to use)."""
    vc = vision_config
    if not getattr(vc, "vision_use_head", True):
        raise ConfigError("this SigLIP tower has no MAP head (vision_use_head=False); DualToken pools with it")
    act = HF_ACTIVATIONS.get(vc.hidden_act)
    if act is None:
        raise ConfigError(f"hidden_act={vc.hidden_act!r} of the SigLIP config has no timm twin here "
                          f"(known: {sorted(HF_ACTIVATIONS)})")
    if image_size is None:
        if naflex(vc):
            raise ConfigError("a SigLIP2 NaFlex tower has no fixed image size: give backbone.image_size")
        image_size = vc.image_size
    trunk = VisionTransformer(
        img_size=image_size, patch_size=vc.patch_size, embed_dim=vc.hidden_size, depth=vc.num_hidden_layers,
        num_heads=vc.num_attention_heads, mlp_ratio=vc.intermediate_size / vc.hidden_size, class_token=False,
        no_embed_class=True, global_pool="map", num_classes=0, act_layer=act,
    )
    for block in trunk.blocks:  # timm's default eps is SigLIP's 1e-6; a config may say otherwise
        block.norm1.eps = block.norm2.eps = vc.layer_norm_eps
    trunk.norm.eps = trunk.attn_pool.norm.eps = vc.layer_norm_eps
    if trunk.blocks[0].mlp.fc1.out_features != vc.intermediate_size:
        raise ConfigError(f"intermediate_size={vc.intermediate_size} is not a whole multiple timm can build")
    return trunk


def resize_position_grid(pos: Tensor, grid: int) -> Tensor:
    """(N0, C) square grid -> (grid * grid, C): bilinear with antialiasing, as SigLIP2 resizes it per image."""
    side = int(round(pos.shape[0] ** 0.5))
    if side * side != pos.shape[0]:
        raise ValueError(f"position embedding of {pos.shape[0]} rows is not a square grid")
    if side == grid:
        return pos
    square = pos.float().reshape(side, side, -1).permute(2, 0, 1).unsqueeze(0)  # (1, C, side, side)
    square = F.interpolate(square, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True)
    return square[0].reshape(pos.shape[1], grid * grid).t().to(pos.dtype)  # (grid * grid, C)


def hf_to_timm(state: dict[str, Tensor], prefix: str = HF_VISION_PREFIX, grid: int | None = None,
               flat_patches: bool = False) -> tuple[dict[str, Tensor], list[KeyMap]]:
    """A transformers SigLIP tower's tensors (under ``prefix``) -> timm trunk tensors, and the record of each key.

    grid: the trunk's token grid per side; the position table is resized to it when it differs (SigLIP2 NaFlex).
    flat_patches: the patch embedding is a Linear over (row, column, channel)-flattened patches (SigLIP2 NaFlex).
    Keys outside ``prefix`` are left alone (not read, not recorded).
    """
    src = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    log: list[KeyMap] = []

    def put(target: str, value: Tensor, sources: list[str], how: str = "renamed") -> None:
        out[target] = value
        log.append(KeyMap(tuple(prefix + s for s in sources), target, how))

    n_layers = 1 + max((int(k.split(".")[2]) for k in src if k.startswith("encoder.layers.")), default=-1)
    pe = "embeddings.patch_embedding."
    weight = src[pe + "weight"]  # (C, 3, p, p) conv, or (C, p*p*3) Linear in NaFlex towers
    if flat_patches:
        p = int(round((weight.shape[1] / 3) ** 0.5))
        weight = weight.reshape(weight.shape[0], p, p, 3).permute(0, 3, 1, 2).contiguous()  # (C, 3, p, p)
        put("patch_embed.proj.weight", weight, [pe + "weight"], "Linear over (row, col, channel) -> conv kernel")
    else:
        put("patch_embed.proj.weight", weight, [pe + "weight"])
    put("patch_embed.proj.bias", src[pe + "bias"], [pe + "bias"])
    pos = src["embeddings.position_embedding.weight"]  # (N0, C)
    how = "leading batch dimension added"
    if grid is not None and grid * grid != pos.shape[0]:
        pos, how = resize_position_grid(pos, grid), f"grid resized to {grid}x{grid} (antialiased bilinear); " + how
    put("pos_embed", pos.unsqueeze(0), ["embeddings.position_embedding.weight"], how)  # (1, N, C)
    for i in range(n_layers):
        hf, ours = f"encoder.layers.{i}.", f"blocks.{i}."
        qkv = [f"{hf}self_attn.{n}_proj" for n in "qkv"]
        put(ours + "attn.qkv.weight", torch.cat([src[n + ".weight"] for n in qkv]), [n + ".weight" for n in qkv],
            "q, k, v stacked")  # (3C, C)
        put(ours + "attn.qkv.bias", torch.cat([src[n + ".bias"] for n in qkv]), [n + ".bias" for n in qkv],
            "q, k, v stacked")  # (3C,)
        for hf_name, our_name in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"),
                                  ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for leaf in ("weight", "bias"):
                put(f"{ours}{our_name}.{leaf}", src[f"{hf}{hf_name}.{leaf}"], [f"{hf}{hf_name}.{leaf}"])
    for leaf in ("weight", "bias"):
        put(f"norm.{leaf}", src[f"post_layernorm.{leaf}"], [f"post_layernorm.{leaf}"])
    put("attn_pool.latent", src["head.probe"], ["head.probe"])  # (1, 1, C)
    width = src["head.probe"].shape[-1]
    for leaf in ("weight", "bias"):
        fused = src[f"head.attention.in_proj_{leaf}"]  # (3C, C) / (3C,): q rows, then k, then v
        put(f"attn_pool.q.{leaf}", fused[:width], [f"head.attention.in_proj_{leaf}"], f"rows 0:{width} (q)")
        put(f"attn_pool.kv.{leaf}", fused[width:], [f"head.attention.in_proj_{leaf}"],
            f"rows {width}:{3 * width} (k, v)")
        for hf_name, our_name in (("head.attention.out_proj", "attn_pool.proj"), ("head.layernorm", "attn_pool.norm"),
                                  ("head.mlp.fc1", "attn_pool.mlp.fc1"), ("head.mlp.fc2", "attn_pool.mlp.fc2")):
            put(f"{our_name}.{leaf}", src[f"{hf_name}.{leaf}"], [f"{hf_name}.{leaf}"])
    read = {s for entry in log for s in entry.sources}
    left = sorted(prefix + k for k in src if prefix + k not in read)
    if left:
        raise KeyError(f"tensors of the SigLIP tower that have no place in the timm trunk: {left[:8]} ({len(left)})")
    return out, log


def load_hf_trunk(spec: str, image_size: int | None = None) -> VisionTransformer:
    """A timm trunk holding a transformers SigLIP / SigLIP2 tower (``hf:<repo id>`` or a local folder), strictly."""
    folder = resolve_hf_folder(spec)
    vc = hf_vision_config(folder)
    trunk = trunk_from_hf_config(vc, image_size if naflex(vc) else None)  # SigLIP v1: the size it was trained at
    state = read_hf_weights(folder)
    prefix = HF_VISION_PREFIX if any(k.startswith(HF_VISION_PREFIX) for k in state) else ""
    tensors, _ = hf_to_timm(state, prefix, grid=trunk.patch_embed.grid_size[0], flat_patches=naflex(vc))
    trunk.load_state_dict(tensors, strict=True)  # any missing, extra or mis-shaped tensor raises here
    return trunk
