"""What a release checkpoint is: its layout, the architecture its tensors and the release's code fix, and the
``ModelConfig`` that rebuilds it (docs/method.md §2, "The release's layouts").

Two layouts were ever published: the **current** code's (AttnProjections, a shortcut tap; code dim 32 in its
configs) and the **early** code's, whose one checkpoint the release's model zoo linked (ResNet-block projections,
no shortcut, code dim 256, K = 32,768). Its architecture is the release's, never a preset's guess of it:

* fixed by the release's code: the tower's tanh GELU (it runs transformers' SigLIP), GroupNorm with 32 groups
  (its modules.py), each branch's attention heads sized from its own code dim (C // d heads of d);
* read off the tensors: each quantizer's depth, K, code dim, and whether its D saved codebooks are one shared
  codebook saved D times or D different ones;
* from the preset a release config name maps to (``RELEASE_MODELS``): the taps, which no tensor shows; the
  release's own ``config.json``, when given, must agree with that preset and with the tensors, or the conversion
  is refused. A small-scale preset (``tiny``, for tests) takes the taps and decoder from that config instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from dualtoken_lite.model.config import MODEL_PRESETS, ModelConfig, model_preset, validate
from dualtoken_lite.model.release_files import ReleaseFormatError
from dualtoken_lite.settings import ConfigError

TOWER_PREFIX = "siglip_model.vision_model."
# The release's --model names (its config folders, with the "_32d" suffix they had until 77d6c54) -> our presets.
RELEASE_MODELS = {
    "model_config_siglip_384_rvq8": "so400m-384", "model_config_siglip_384_rvq8_32d": "so400m-384",
    "model_config_siglip_256_rvq4": "so400m-256", "model_config_siglip_256_rvq4_32d": "so400m-256",
    "model_config": "so400m-384-dim256",  # the early code's config folder (its model zoo's dim-256 tokenizer)
}
RELEASE_PRESETS = frozenset(RELEASE_MODELS.values())  # presets that describe a release config exactly
GRID_PRESETS = {("attention", 27): "so400m-384", ("attention", 16): "so400m-256", ("conv", 27): "so400m-384-dim256"}
# The tower each release preset starts from (its teacher): provenance for the converted config.
RELEASE_TOWERS = {"so400m-384": "hf:google/siglip2-so400m-patch14-384", "so400m-256": "hf:google/siglip2-so400m-patch16-256",
                  "so400m-384-dim256": "hf:google/siglip-so400m-patch14-384"}
RELEASE_NORM_GROUPS = 32  # modules.py Normalize: GroupNorm(num_groups=32) everywhere in the decoder and ResNet blocks
RELEASE_ACTIVATION = "gelu_tanh"  # transformers' SigLIP default hidden_act, "gelu_pytorch_tanh"
CODEBOOK_BUFFERS = {"weight": "embed", "cluster_size_ema": "cluster_size", "embed_ema": "embed_avg"}
TEXT_SCALARS = ("siglip_model.logit_scale", "siglip_model.logit_bias")


@dataclass(frozen=True)
class Layout:
    """One published key layout: its projection kind, module names (theirs -> ours) and projection part names."""

    name: str  # how the docs name it
    projection: str  # ModelConfig.projection
    projections: dict[str, str]  # release module -> our module
    quantizers: dict[str, str]  # release quantizer -> ours (pixel first)
    parts: dict[str, str]  # first name component inside a projection -> ours


LAYOUTS = {
    "attention": Layout("the current release (AttnProjections)", "attention",
                        {"prequant_pix": "pixel_proj", "prequant_shortcut": "shortcut_proj", "prequant_sem":
                         "semantic_proj", "postquant_pix": "pixel_post_proj", "postquant_sem": "semantic_post_proj"},
                        {"quantizer_pix": "pixel_quantizer", "quantizer_sem": "semantic_quantizer"},
                        {"norm1": "norm_attn", "norm3": "norm_lin", "norm2": "norm_mlp", "proj": "lin"}),
    "conv": Layout("the early release (ResNet-block projections, its model zoo's dim-256 tokenizer)", "conv",
                   {"prequant_visual": "pixel_proj", "prequant_semantic": "semantic_proj",
                    "postquant_visual": "pixel_post_proj", "postquant_semantic": "semantic_post_proj"},
                   {"quantizer": "pixel_quantizer", "quantizer_semantic": "semantic_quantizer"},
                   {part: f"block.{part}" for part in ("norm1", "conv1", "norm2", "conv2")} | {"nin_shortcut": "block.skip"}),
}


# ------------------------------------------------------------------------------------------------ layout
def release_layout(state: dict[str, Tensor]) -> Layout:
    """Which published layout a checkpoint has, from its module names; other layouts are refused with the reason."""
    if "prequant_sem.proj.weight" in state and "quantizer_pix.codebooks.0.weight" in state:
        return LAYOUTS["attention"]
    if "prequant_visual.conv1.weight" in state and "quantizer.codebooks.0.weight" in state:
        return LAYOUTS["conv"]
    if any(k.startswith(("prequant_pixel.", "prequant_pix.")) for k in state):
        raise ReleaseFormatError(
            "this checkpoint has the release's March 2026 layout (commits 41be90e / b28505c): its semantic branch "
            "quantizes the hidden state at full width without a pre-quant projection, and its post-quant attention "
            "is not causal. dualtoken_lite builds neither, and no weights of that layout were published")
    raise ReleaseFormatError("not a DualToken release checkpoint: it has neither prequant_sem.* (the current "
                             "release) nor prequant_visual.* (the early release's dim-256 model)")


def codebook_copies(state: dict[str, Tensor], name: str) -> list[int]:
    """Indices d of ``<name>.codebooks.d.weight`` in the checkpoint (one per residual depth), sorted."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(rf"{re.escape(name)}\.codebooks\.(\d+)\.weight", k))}
    return sorted(found)


def codebooks_shared(state: dict[str, Tensor], name: str) -> bool:
    """True when the D saved codebooks are copies of one (the release saves a shared codebook once per depth)."""
    copies = codebook_copies(state, name)
    first = {buf: state.get(f"{name}.codebooks.{copies[0]}.{buf}") for buf in CODEBOOK_BUFFERS}
    for d in copies[1:]:
        for buf, value in first.items():
            other = state.get(f"{name}.codebooks.{d}.{buf}")
            if value is not None and other is not None and not value.is_meta and not torch.equal(value, other):
                return False
    return True


# ------------------------------------------------------------------------------------------------ config
def stated_settings(settings: dict, layout: Layout, layers: int) -> dict[str, object]:
    """What a release config says about the model, in our dotted field names."""
    try:
        if layout.projection == "attention":
            shortcut = settings["layer_shortcut"]
            out: dict[str, object] = {"pixel_layer": settings["layer_recon"], "shortcut_layer": shortcut,
                                      "semantic_layer": settings["layer_sem"]}
            if shortcut is not None:
                out["shortcut_weight"] = float(settings["weight_shortcut"])
            vq = {"pixel_quantizer": settings["vq_pix"], "semantic_quantizer": settings["vq_sem"]}
        else:  # the early code hard-codes its taps: blocks L - 21 and L - 1 (6 and 26 of 27)
            out = {"pixel_layer": settings.get("layer_recon", layers - 21), "shortcut_layer": None,
                   "semantic_layer": settings.get("layer_sem", layers - 1)}
            vq = dict.fromkeys(("pixel_quantizer", "semantic_quantizer"), settings)
        for ours, q in vq.items():
            if list(q["code_shape"][:2]) != list(q["latent_shape"][:2]):
                raise ReleaseFormatError(f"config: code_shape {q['code_shape']} groups several grid positions into "
                                         f"one code (latent_shape {q['latent_shape']}); dualtoken_lite quantizes "
                                         "each position")
            out |= {f"{ours}.code_dim": q["embed_dim"], f"{ours}.depth": q["code_shape"][2],
                    f"{ours}.codebook_size": q["n_embed"], f"{ours}.shared_codebook": bool(q["shared_codebook"])}
        dd = settings["ddconfig"]
        lowest = dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)  # taming's grid at the decoder's input level
        latent = settings.get("decoder_latent_shape") or [lowest, lowest]
        if list(dd["attn_resolutions"]) != [lowest] or latent != [lowest, lowest]:
            raise ReleaseFormatError(f"config: ddconfig attention at {dd['attn_resolutions']} and decoder input "
                                     f"{latent}; dualtoken_lite's decoder attends at its {lowest} x {lowest} input only")
        out |= {"backbone.width": settings["hidden_size"], "decoder_channels": dd["ch"],
                "decoder_channel_mult": tuple(reversed(dd["ch_mult"])), "decoder_res_blocks": dd["num_res_blocks"],
                "decoder_in_channels": dd["decoder_in_channels"], "decoder_latent_grid": lowest,
                "backbone.image_size": dd["resolution"]}
    except (KeyError, TypeError, IndexError) as err:
        raise ReleaseFormatError(f"the release config lacks or garbles {err}: not the config of {layout.name}") from None
    return out


def get_field(cfg: ModelConfig, dotted: str):
    """``cfg.<dotted>`` (e.g. 'pixel_quantizer.depth')."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_field(cfg: ModelConfig, dotted: str, value) -> None:
    """``cfg.<dotted> = value``."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, leaf, value)


def preset_name(layout: Layout, grid: int, model_name: str | None) -> str:
    """Our preset for a checkpoint: the one its release config name maps to, a named preset, or by layout and grid."""
    if model_name is not None:
        if model_name not in RELEASE_MODELS and model_name not in MODEL_PRESETS:
            raise ConfigError(f"--model {model_name!r}: not a release config ({sorted(RELEASE_MODELS)}) "
                              f"nor a preset ({sorted(MODEL_PRESETS)})")
        return RELEASE_MODELS.get(model_name, model_name)
    if (layout.projection, grid) not in GRID_PRESETS:
        raise ConfigError(f"the checkpoint's tower has a {grid}x{grid} grid, which no release config of "
                          f"{layout.name} has; give --model (a release config name or a preset)")
    return GRID_PRESETS[layout.projection, grid]


def release_architecture(state: dict[str, Tensor], layout: Layout) -> dict[str, object]:
    """What the checkpoint's tensors and the release's code fix, in our dotted field names: the activation, the
    GroupNorm groups, the projection kind, each quantizer's shape and codebook sharing, the attention heads."""
    width = state[TOWER_PREFIX + "embeddings.position_embedding.weight"].shape[1]
    fixed: dict[str, object] = {"backbone.activation": RELEASE_ACTIVATION, "decoder_norm_groups": RELEASE_NORM_GROUPS,
                                "projection": layout.projection}
    heads = {}
    for release, ours in layout.quantizers.items():
        copies = codebook_copies(state, release)
        if not copies or copies != list(range(len(copies))):
            raise ReleaseFormatError(f"{release}.codebooks.*.weight: found depths {copies}, expected 0..D-1")
        rows, dim = state[f"{release}.codebooks.0.weight"].shape  # (K + 1, d): the last row pads
        fixed |= {f"{ours}.depth": len(copies), f"{ours}.codebook_size": rows - 1, f"{ours}.code_dim": dim,
                  f"{ours}.shared_codebook": codebooks_shared(state, release)}
        if layout.projection == "attention":  # the release: C // d heads of C // (C // d) = d (it asserts d | C)
            if width % dim:
                raise ReleaseFormatError(f"{release}: code dim {dim} does not divide the width {width}; the release's "
                                         "AttnProjection cannot build it (it asserts in_dim % out_dim == 0)")
            heads[ours] = width // (width // dim)
    if heads:
        pixel, semantic = heads["pixel_quantizer"], heads["semantic_quantizer"]
        fixed |= {"proj_head_dim": pixel, "semantic_proj_head_dim": semantic if semantic != pixel else None}
    return fixed


def disagreements(cfg: ModelConfig, wanted: dict[str, object]) -> list[str]:
    """'field value (ours value)' for every wanted field that ``cfg`` holds otherwise."""
    return [f"{field} {value!r} (ours {get_field(cfg, field)!r})" for field, value in wanted.items()
            if get_field(cfg, field) != value]


def release_model_config(state: dict[str, Tensor], model_name: str | None = None, settings: dict | None = None
                         ) -> tuple[ModelConfig, str]:
    """The ModelConfig of a release checkpoint (the release's architecture) and the preset it came from.

    Shapes (code dims, depths, K, shared or per-depth codebooks, heads) come from the tensors. Taps come from the
    preset; a release config (``settings``), when given, must agree with it and with the tensors, or the
    conversion is refused. A small-scale preset (not in RELEASE_PRESETS) takes the taps and the decoder from the
    config instead, which it then needs.
    """
    layout = release_layout(state)
    pos = state.get(TOWER_PREFIX + "embeddings.position_embedding.weight")
    if pos is None:
        raise ReleaseFormatError(f"no {TOWER_PREFIX}embeddings.position_embedding.weight: not a DualToken release "
                                 "checkpoint (its tower lives under siglip_model.vision_model.)")
    grid = int(round(pos.shape[0] ** 0.5))
    name = preset_name(layout, grid, model_name)
    cfg, exact = model_preset(name), name in RELEASE_PRESETS
    if exact and cfg.projection != layout.projection:
        raise ConfigError(f"the checkpoint has {layout.name}'s layout, but --model {model_name!r} is preset {name!r} "
                          f"with {cfg.projection} projections; leave --model out or name the matching preset")
    if not exact and settings is None:
        raise ConfigError(f"preset {name!r} is not a release config: its taps and decoder cannot be the release's "
                          "without the checkpoint's own config.json; give it with --config")
    for field, value in release_architecture(state, layout).items():
        set_field(cfg, field, value)
    if settings is not None:
        layers = len({k.split(".")[4] for k in state if k.startswith(TOWER_PREFIX + "encoder.layers.")})
        stated = stated_settings(settings, layout, layers)
        # an exact preset must agree on everything; a small-scale one takes the config's taps and decoder, but the
        # config must still describe these tensors
        checked = stated if exact else {k: v for k, v in stated.items() if "quantizer." in k or k == "backbone.width"}
        wrong = disagreements(cfg, checked)
        if wrong:
            where = f"preset {name!r}" if exact else "the checkpoint's tensors"
            raise ConfigError(f"the release config disagrees with {where}: " + "; ".join(wrong) + ". The converted "
                              "model would not be the network that was trained; convert with the config it was "
                              "trained with (--config) and the preset that describes it (--model)")
        for field, value in stated.items():
            set_field(cfg, field, value)
    if grid != cfg.backbone.grid:
        raise ConfigError(f"preset {name!r} has a {cfg.backbone.grid}x{cfg.backbone.grid} grid, the checkpoint's "
                          f"tower {grid}x{grid}")
    cfg.backbone.pretrained = RELEASE_TOWERS.get(name)  # provenance only: the tower's weights are in the file
    try:
        return validate(cfg), name
    except ConfigError as err:
        raise ConfigError(f"the release's architecture does not fit preset {name!r}: {err}") from None
