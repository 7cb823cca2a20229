"""The released DualToken checkpoints -> a ``DualToken`` (docs/method.md §2): every tensor, its new name, its shape.

The authors' checkpoint and our model hold the same tensors; only names and a few shapes differ:

    release                                   ours                                    what changes
    siglip_model.vision_model.*               encoder.trunk.*                         model/hf_siglip.py: renames,
                                                                                      q/k/v stacked, MAP in_proj split,
                                                                                      pos (729, C) -> (1, 729, C)
    siglip_model.logit_scale, logit_bias      -                                       dropped: text-image scalars
    prequant_{pix,shortcut,sem}.*             {pixel,shortcut,semantic}_proj.*        norm1 -> norm_attn,
    postquant_{pix,sem}.*                     {pixel,semantic}_post_proj.*            norm3 -> norm_lin,
                                                                                      norm2 -> norm_mlp, proj -> lin;
                                                                                      attn.zero_k_bias dropped
    quantizer_{pix,sem}.codebooks.{0..D-1}    {pixel,semantic}_quantizer.codebooks.0  D references to one codebook:
        .weight (K + 1, d)                        .embed (K, d)                       row K is a padding row, dropped
        .cluster_size_ema (K,)                    .cluster_size (K,)
        .embed_ema (K, d)                         .embed_avg (K, d)
                                                  .initialised, .steps                set: True, 0
    post_quant_conv.*                         post_quant_block.*                      nin_shortcut -> skip
    decoder.mid.{block_1, attn_1, block_2}    decoder.mid.{0, 1, 2}
    decoder.up.{i}.{block,attn}.{j}           decoder.levels.{L-1-i}.{blocks,attns}.{j}   taming counts levels from
    decoder.up.{i}.upsample.conv              decoder.levels.{L-1-i}.upsample.conv        the output up; we count
                                                                                          from the input (24 x 24)

A zero key bias is dropped without loss: a bias on k adds q . b_k to every logit of a query, which the softmax
cancels. The D codebook copies must agree (they are one shared codebook saved D times); when they do not, the
conversion refuses unless a copy is chosen (``codebook_copy``), with a warning.

    state = read_release_checkpoint("dualtoken.pt")       # weights_only load; --trust-pickle for the rest
    cfg = release_model_config(state)                        # preset from the grid or the release's config name
    tensors, report = convert_release_state(state, cfg)      # our state dict + one KeyMap per source key
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dualtoken_lite.model.config import MODEL_PRESETS, ModelConfig, model_preset
from dualtoken_lite.model.hf_siglip import KeyMap, hf_to_timm
from dualtoken_lite.settings import ConfigError

TOWER_PREFIX = "siglip_model.vision_model."
# The release's model configs (its --model names, with or without their "_32d" suffix) -> our presets.
RELEASE_MODELS = {"model_config_siglip_384_rvq8": "so400m-384", "model_config_siglip_256_rvq4": "so400m-256"}
GRID_PRESETS = {27: "so400m-384", 16: "so400m-256"}  # token grid of the tower -> preset, when no name is given
# The tower each released config starts from (its teacher): provenance for the converted config.
RELEASE_TOWERS = {"so400m-384": "hf:google/siglip2-so400m-patch14-384", "so400m-256": "hf:google/siglip2-so400m-patch16-256"}
PROJECTIONS = {"prequant_pix": "pixel_proj", "prequant_shortcut": "shortcut_proj", "prequant_sem": "semantic_proj",
               "postquant_pix": "pixel_post_proj", "postquant_sem": "semantic_post_proj"}
PROJECTION_PARTS = {"norm1": "norm_attn", "norm3": "norm_lin", "norm2": "norm_mlp", "proj": "lin"}  # others: same
QUANTIZERS = {"quantizer_pix": "pixel_quantizer", "quantizer_sem": "semantic_quantizer"}
CODEBOOK_BUFFERS = {"weight": "embed", "cluster_size_ema": "cluster_size", "embed_ema": "embed_avg"}
TEXT_SCALARS = ("siglip_model.logit_scale", "siglip_model.logit_bias")


class ReleaseFormatError(RuntimeError):
    """A file is not a release checkpoint we can convert; the message says what is wrong and what to do."""


# ------------------------------------------------------------------------------------------------ reading
def read_release_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of a release checkpoint (.pt/.bin torch pickle, or .safetensors), unwrapped and unprefixed.

    Torch pickles are read with ``weights_only=True``, which runs no code from the file. A file that needs more
    is refused with the reason, unless ``trust_pickle`` (then: a full unpickle, with a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such release checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    elif trust_pickle:
        warnings.warn(f"--trust-pickle: unpickling {path} fully; this runs any code stored in the file", stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ReleaseFormatError(
                f"{path} holds more than tensors, and torch's safe loader (weights_only=True) refuses it: {reason}. "
                "A full unpickle runs code stored in the file. If you trust where it came from, rerun with "
                "--trust-pickle"
            ) from err
    for key in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ReleaseFormatError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# ------------------------------------------------------------------------------------------------ config
def codebook_copies(state: dict[str, Tensor], name: str) -> list[int]:
    """Indices d of ``<name>.codebooks.d.weight`` in the checkpoint (one per residual depth), sorted."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(rf"{name}\.codebooks\.(\d+)\.weight", k))}
    return sorted(found)


def release_model_config(state: dict[str, Tensor], model_name: str | None = None) -> tuple[ModelConfig, str]:
    """The ModelConfig of a release checkpoint: the preset of its config name (or its grid), sizes from its shapes."""
    pos = state.get(TOWER_PREFIX + "embeddings.position_embedding.weight")
    if pos is None:
        raise ReleaseFormatError(f"no {TOWER_PREFIX}embeddings.position_embedding.weight: not a DualToken release "
                                 "checkpoint (its tower lives under siglip_model.vision_model.)")
    grid = int(round(pos.shape[0] ** 0.5))
    if model_name is not None:  # a released config name, or one of our presets (e.g. "tiny" for small tests)
        key = re.sub(r"_\d+d$", "", model_name)
        if key not in RELEASE_MODELS and model_name not in MODEL_PRESETS:
            raise ConfigError(f"--model {model_name!r}: not a released config ({sorted(RELEASE_MODELS)}) "
                              f"nor a preset ({sorted(MODEL_PRESETS)})")
        name = RELEASE_MODELS.get(key, model_name)
    elif grid in GRID_PRESETS:
        name = GRID_PRESETS[grid]
    else:
        raise ConfigError(f"the checkpoint's tower has a {grid}x{grid} grid, which no released config has; "
                          f"give --model ({sorted(RELEASE_MODELS)})")
    cfg = model_preset(name)
    if cfg.shortcut_layer is None:  # the release always has a shortcut: a preset without one (tiny, which reads the
        cfg.pixel_layer, cfg.shortcut_layer = 2, 1  # patch embedding) gets the paper's structure at its own size
    if cfg.backbone.grid != grid:
        raise ConfigError(f"--model {model_name!r} is the {cfg.backbone.grid}x{cfg.backbone.grid} preset {name!r}, "
                          f"but the checkpoint's tower has a {grid}x{grid} grid")
    cfg.backbone.pretrained = RELEASE_TOWERS.get(name)  # provenance only: the tower's weights are in the file
    width = cfg.backbone.width
    for release, quantizer in (("quantizer_pix", cfg.pixel_quantizer), ("quantizer_sem", cfg.semantic_quantizer)):
        copies = codebook_copies(state, release)
        if not copies:
            raise ReleaseFormatError(f"no {release}.codebooks.*.weight in the checkpoint")
        rows, dim = state[f"{release}.codebooks.0.weight"].shape  # (K + 1, d): the last row pads
        quantizer.depth, quantizer.codebook_size, quantizer.code_dim = len(copies), rows - 1, dim
    # The release sizes its projection heads from the code dim: C // d heads of C // (C // d) (32 -> 36 heads of 32;
    # 256 -> 4 heads of 288, whose head mean it average-pools to 256).
    d = cfg.pixel_quantizer.code_dim
    cfg.proj_head_dim = width // (width // d)
    cfg.proj_pool_heads = cfg.proj_head_dim != d
    return cfg, name


# ------------------------------------------------------------------------------------------------ tensors
def projection_target(key: str) -> str | None:
    """``prequant_pix.norm3.weight`` -> ``pixel_proj.norm_lin.weight``; None for keys of no projection."""
    head, _, rest = key.partition(".")
    if head not in PROJECTIONS:
        return None
    first, _, tail = rest.partition(".")
    return f"{PROJECTIONS[head]}.{PROJECTION_PARTS.get(first, first)}" + (f".{tail}" if tail else "")


def decoder_target(key: str, levels: int) -> str | None:
    """Taming decoder / post-quant block names -> ours; None for other keys."""
    if key.startswith("post_quant_conv."):
        return "post_quant_block." + key[len("post_quant_conv."):].replace("nin_shortcut", "skip")
    if not key.startswith("decoder."):
        return None
    key = key.replace("nin_shortcut", "skip")
    for theirs, ours in (("mid.block_1.", "mid.0."), ("mid.attn_1.", "mid.1."), ("mid.block_2.", "mid.2.")):
        key = key.replace("decoder." + theirs, "decoder." + ours)
    m = re.fullmatch(r"decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)", key)
    if m:  # taming's up.i counts from the output resolution; our levels from the decoder's input grid
        level, part, rest = levels - 1 - int(m.group(1)), m.group(2), m.group(3)
        part = {"block": "blocks", "attn": "attns", "upsample": "upsample"}[part]
        key = f"decoder.levels.{level}.{part}.{rest}"
    return key


def take_codebook(state: dict[str, Tensor], release: str, ours: str, codebook_copy: int | None
                  ) -> tuple[dict[str, Tensor], list[KeyMap], list[str]]:
    """The D saved copies of one shared codebook -> our single codebook's buffers (padding row dropped)."""
    copies = codebook_copies(state, release)
    chosen = codebook_copy if codebook_copy is not None else copies[0]
    if chosen not in copies:
        raise ConfigError(f"--codebook-copy {chosen}: {release} has copies {copies}")
    notes: list[str] = []
    differ = sorted({
        d for d in copies for buf in CODEBOOK_BUFFERS
        if f"{release}.codebooks.{d}.{buf}" in state and not state[f"{release}.codebooks.{d}.{buf}"].is_meta
        and not torch.equal(state[f"{release}.codebooks.{d}.{buf}"], state[f"{release}.codebooks.{chosen}.{buf}"])
    })
    if differ and codebook_copy is None:
        raise ReleaseFormatError(
            f"{release}: the {len(copies)} codebook copies should be one shared codebook saved {len(copies)} times, "
            f"but copies {differ} differ from copy {chosen}. Choose one with --codebook-copy N (N in {copies}); "
            "the others are dropped"
        )
    if differ:
        notes.append(f"{release}: copies {differ} differ from the chosen copy {chosen}; they were dropped")
        warnings.warn(notes[-1], stacklevel=3)
    out: dict[str, Tensor] = {}
    log: list[KeyMap] = []
    pre = f"{release}.codebooks."
    weight = state[f"{pre}{chosen}.weight"]  # (K + 1, d)
    K = weight.shape[0] - 1
    out[f"{ours}.codebooks.0.embed"] = weight[:K]  # (K, d): row K is the release's padding row, never looked up
    log.append(KeyMap((f"{pre}{chosen}.weight",), f"{ours}.codebooks.0.embed", f"rows 0:{K} (row {K} pads)"))
    for buf in ("cluster_size_ema", "embed_ema"):
        target = f"{ours}.codebooks.0.{CODEBOOK_BUFFERS[buf]}"
        if f"{pre}{chosen}.{buf}" in state:
            out[target] = state[f"{pre}{chosen}.{buf}"]
            log.append(KeyMap((f"{pre}{chosen}.{buf}",), target, "renamed"))
        else:  # a non-EMA release quantizer: start the EMA as if every code had been chosen once
            out[target] = torch.ones(K) if buf == "cluster_size_ema" else weight[:K].clone()
            notes.append(f"{target}: not in the checkpoint; set as if every code had been chosen once")
            log.append(KeyMap((), target, "synthesised: EMA count 1 per code"))
    out[f"{ours}.codebooks.0.initialised"] = torch.tensor(True)
    out[f"{ours}.codebooks.0.steps"] = torch.tensor(0)
    log += [KeyMap((), f"{ours}.codebooks.0.initialised", "set: True"), KeyMap((), f"{ours}.codebooks.0.steps", "set: 0")]
    for d in copies:
        for buf in CODEBOOK_BUFFERS:
            key = f"{pre}{d}.{buf}"
            if d != chosen and key in state:
                log.append(KeyMap((key,), None, f"dropped: copy {d} of the shared codebook (copy {chosen} kept)"))
    return out, log, notes


def convert_release_state(state: dict[str, Tensor], cfg: ModelConfig, codebook_copy: int | None = None
                          ) -> tuple[dict[str, Tensor], list[KeyMap], list[str]]:
    """Release tensors -> our state dict for ``cfg``, the record of every key, and notes worth reading.

    Every source key is either mapped, transformed, or dropped with its reason; an unknown key is an error.
    Works on meta tensors too (shapes only): value checks are skipped for them.
    """
    levels = len(cfg.decoder_channel_mult)
    out, log, notes = {}, [], []
    tower, tower_log = hf_to_timm(state, TOWER_PREFIX, grid=cfg.backbone.grid)
    out.update({"encoder.trunk." + k: v for k, v in tower.items()})
    log += [KeyMap(m.sources, "encoder.trunk." + m.target, m.how) for m in tower_log]
    for release, ours in QUANTIZERS.items():
        tensors, entries, more = take_codebook(state, release, ours, codebook_copy)
        out.update(tensors)
        log += entries
        notes += more
    handled = {s for m in log for s in m.sources}
    for key, value in state.items():
        if key in handled:
            continue
        if key in TEXT_SCALARS:
            shown = "" if value.is_meta else f" (value {value.flatten()[0].item():.6g})"
            log.append(KeyMap((key,), None, f"dropped: SigLIP's text-image logit scalar{shown}; no text tower here"))
        elif key.startswith("siglip_model.text_model."):
            log.append(KeyMap((key,), None, "dropped: SigLIP text tower (not part of the tokenizer)"))
        elif key.endswith(".attn.zero_k_bias"):
            nonzero = not value.is_meta and bool(value.abs().max() > 0)
            if nonzero:
                notes.append(f"{key} is not zero; dropped all the same (a key bias cancels in the softmax)")
            log.append(KeyMap((key,), None, "dropped: zero key bias (a key bias cancels in the softmax)"))
        elif (target := projection_target(key) or decoder_target(key, levels)) is not None:
            out[target] = value
            log.append(KeyMap((key,), target, "renamed" if target != key else "same name"))
        else:
            raise ReleaseFormatError(f"{key} {tuple(value.shape)}: no place for it in DualToken; not a release "
                                     "checkpoint of a known layout")
    floats = {k: v for k, v in out.items() if v.is_floating_point() and v.dtype != torch.float32}
    if floats:
        notes.append(f"{len(floats)} tensors cast from {next(iter(floats.values())).dtype} to float32")
        out.update({k: v.float() for k, v in floats.items()})
    return out, log, notes


def model_from_release(state: dict[str, Tensor], model_name: str | None = None, codebook_copy: int | None = None):
    """A DualToken (eval mode) holding a release checkpoint's tensors, loaded strictly; with its report and notes."""
    from dualtoken_lite.model.dualtoken import DualToken
    from dualtoken_lite.model.pretrained import check_state_dict

    cfg, _ = release_model_config(state, model_name)
    tensors, log, notes = convert_release_state(state, cfg, codebook_copy)
    provenance, cfg.backbone.pretrained = cfg.backbone.pretrained, None  # the tower's weights are in `tensors`
    with torch.device("meta"):  # no random initialisation of ~700 M weights that are replaced at once
        model = DualToken(cfg)
    check_state_dict(model.state_dict(), tensors, "the converted release checkpoint")
    model.load_state_dict(tensors, strict=True, assign=True)
    model.cfg.backbone.pretrained = provenance
    return model.eval(), log, notes
