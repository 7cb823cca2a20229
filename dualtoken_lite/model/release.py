"""The authors' DualToken checkpoints -> a ``DualToken`` (docs/method.md §2): every tensor, its new name, its shape.

Both published layouts (``model/release_config.py``: the current release's and the early one's dim-256 model)
hold the same tensors as our model under other names:

    release (current / early)                       ours                            what changes
    siglip_model.vision_model.*                     encoder.trunk.*                 model/hf_siglip.py: renames,
                                                                                    q/k/v stacked, MAP in_proj split,
                                                                                    pos (N, C) -> (1, N, C)
    siglip_model.text_model.*, siglip_model.logit_*  -                              dropped: text tower
    prequant_{pix,shortcut,sem} / _{visual,semantic}  {pixel,shortcut,semantic}_proj  AttnProjection: norm1 ->
    postquant_{pix,sem} / _{visual,semantic}        {pixel,semantic}_post_proj      norm_attn, norm3 -> norm_lin,
                                                                                    norm2 -> norm_mlp, proj -> lin,
                                                                                    attn.zero_k_bias dropped;
                                                                                    ResNet block -> .block.*,
                                                                                    nin_shortcut -> skip
    quantizer_{pix,sem} / quantizer{,_semantic}     {pixel,semantic}_quantizer      weight (K + 1, d) -> embed (K, d)
        .codebooks.{0..D-1}.{weight, cluster_size_ema, embed_ema}                   (row K pads), cluster_size_ema ->
                                                                                    cluster_size, embed_ema ->
                                                                                    embed_avg; a shared codebook,
                                                                                    saved D times, is kept once,
                                                                                    per-depth codebooks all D
    post_quant_conv.*, decoder.*                    post_quant_block.*, decoder.*   taming's up.i counts levels from
                                                                                    the output, ours from the input;
                                                                                    nin_shortcut -> skip

A zero key bias is dropped without loss: a bias on k adds q . b_k to every logit of a query, which the softmax
cancels.

    state = read_release_checkpoint("epoch_20.pt")                       # model/release_files.py
    model, log, notes = model_from_release(state, "model_config_siglip_384_rvq8", read_release_config(folder))
"""

from __future__ import annotations

import copy
import re

import torch
from torch import Tensor

from dualtoken_lite.model.config import ModelConfig
from dualtoken_lite.model.hf_siglip import KeyMap, hf_to_timm
from dualtoken_lite.model.release_config import (
    CODEBOOK_BUFFERS,
    TEXT_SCALARS,
    TOWER_PREFIX,
    Layout,
    codebook_copies,
    disagreements,
    get_field,
    release_architecture,
    release_layout,
    release_model_config,
)
from dualtoken_lite.model.release_files import ReleaseFormatError
from dualtoken_lite.settings import ConfigError


# ------------------------------------------------------------------------------------------------ tensors
def projection_target(key: str, layout: Layout) -> str | None:
    """``prequant_pix.norm3.weight`` -> ``pixel_proj.norm_lin.weight``; None for keys of no projection."""
    head, _, rest = key.partition(".")
    if head not in layout.projections:
        return None
    first, _, tail = rest.partition(".")
    return f"{layout.projections[head]}.{layout.parts.get(first, first)}" + (f".{tail}" if tail else "")


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


def take_codebooks(state: dict[str, Tensor], release: str, ours: str, shared: bool
                   ) -> tuple[dict[str, Tensor], list[KeyMap], list[str]]:
    """The release's D saved codebooks -> ours: one codebook when shared (the D copies are equal), else D."""
    out: dict[str, Tensor] = {}
    log: list[KeyMap] = []
    notes: list[str] = []
    pre = f"{release}.codebooks."
    for d in codebook_copies(state, release):
        if shared and d > 0:
            log += [KeyMap((f"{pre}{d}.{buf}",), None, "dropped: copy of the shared codebook (copy 0 kept)")
                    for buf in CODEBOOK_BUFFERS if f"{pre}{d}.{buf}" in state]
            continue
        target = f"{ours}.codebooks.{d}."
        weight = state[f"{pre}{d}.weight"]  # (K + 1, d)
        K = weight.shape[0] - 1
        out[target + "embed"] = weight[:K]  # (K, d): row K is the release's padding row, never looked up
        log.append(KeyMap((f"{pre}{d}.weight",), target + "embed", f"rows 0:{K} (row {K} pads)"))
        for buf in ("cluster_size_ema", "embed_ema"):
            if f"{pre}{d}.{buf}" in state:
                out[target + CODEBOOK_BUFFERS[buf]] = state[f"{pre}{d}.{buf}"]
                log.append(KeyMap((f"{pre}{d}.{buf}",), target + CODEBOOK_BUFFERS[buf], "renamed"))
            else:  # a codebook without EMA buffers: start the EMA as if every code had been chosen once
                out[target + CODEBOOK_BUFFERS[buf]] = torch.ones(K) if buf == "cluster_size_ema" else weight[:K].clone()
                notes.append(f"{target + CODEBOOK_BUFFERS[buf]}: not in the checkpoint; set as if every code had "
                             "been chosen once")
                log.append(KeyMap((), target + CODEBOOK_BUFFERS[buf], "synthesised: EMA count 1 per code"))
        out[target + "initialised"], out[target + "steps"] = torch.tensor(True), torch.tensor(0)
        log += [KeyMap((), target + "initialised", "set: True"), KeyMap((), target + "steps", "set: 0")]
    if not shared:
        notes.append(f"{release}: {len(codebook_copies(state, release))} different codebooks, one per depth "
                     "(shared_codebook false): kept as they are")
    return out, log, notes


def convert_release_state(state: dict[str, Tensor], cfg: ModelConfig) -> tuple[dict[str, Tensor], list[KeyMap], list[str]]:
    """Release tensors -> our state dict for ``cfg``, the record of every key, and notes worth reading.

    Every source key is either mapped, transformed, or dropped with its reason; an unknown key is an error.
    Works on meta tensors too (shapes only): value checks are skipped for them.
    """
    layout = release_layout(state)
    levels = len(cfg.decoder_channel_mult)
    out, log, notes = {}, [], []
    try:
        tower, tower_log = hf_to_timm(state, TOWER_PREFIX, grid=cfg.backbone.grid)
    except KeyError as err:
        raise ReleaseFormatError(f"the checkpoint's SigLIP tower is incomplete or of another kind: {err}") from None
    out.update({"encoder.trunk." + k: v for k, v in tower.items()})
    log += [KeyMap(m.sources, "encoder.trunk." + m.target, m.how) for m in tower_log]
    for release, ours in layout.quantizers.items():
        tensors, entries, more = take_codebooks(state, release, ours, get_field(cfg, ours).shared_codebook)
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
            if not value.is_meta and bool(value.abs().max() > 0):
                notes.append(f"{key} is not zero; dropped all the same (a key bias cancels in the softmax)")
            log.append(KeyMap((key,), None, "dropped: zero key bias (a key bias cancels in the softmax)"))
        elif (target := projection_target(key, layout) or decoder_target(key, levels)) is not None:
            out[target] = value
            log.append(KeyMap((key,), target, "renamed" if target != key else "same name"))
        else:
            raise ReleaseFormatError(f"{key} {tuple(value.shape)}: no place for it in DualToken; not a checkpoint "
                                     f"of {layout.name}")
    floats = {k: v for k, v in out.items() if v.is_floating_point() and v.dtype != torch.float32}
    if floats:
        notes.append(f"{len(floats)} tensors cast from {next(iter(floats.values())).dtype} to float32")
        out.update({k: v.float() for k, v in floats.items()})
    return out, log, notes


def model_from_release(state: dict[str, Tensor], model_name: str | None = None, settings: dict | None = None,
                       model_cfg: ModelConfig | None = None):
    """A DualToken (eval mode) holding a release checkpoint's tensors, loaded strictly; with its report and notes.

    ``model_cfg``: build this config instead of deriving one (a training run's --load_from); it must have the
    release's fixed architecture (``release_architecture``), or the load is refused naming the differences.
    """
    from dualtoken_lite.model.dualtoken import DualToken
    from dualtoken_lite.model.pretrained import check_state_dict

    if model_cfg is None:
        cfg, _ = release_model_config(state, model_name, settings)
    else:
        cfg = copy.deepcopy(model_cfg)
        wrong = disagreements(cfg, release_architecture(state, release_layout(state)))
        if wrong:
            raise ConfigError("this run's model differs from the release checkpoint's architecture: "
                              + "; ".join(wrong) + "; set those fields (--model.<field>) to the release's values")
    tensors, log, notes = convert_release_state(state, cfg)
    provenance, cfg.backbone.pretrained = cfg.backbone.pretrained, None  # the tower's weights are in `tensors`
    with torch.device("meta"):  # no random initialisation of ~700 M weights that are replaced at once
        model = DualToken(cfg)
    check_state_dict(model.state_dict(), tensors, "the converted release checkpoint")
    model.load_state_dict(tensors, strict=True, assign=True)
    model.cfg.backbone.pretrained = provenance
    return model.eval(), log, notes
