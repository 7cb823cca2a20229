"""Unified models on disk: one folder with ``config.json`` and ``model.safetensors``, loaded strictly.

    data/unified/both/
        config.json          {"format": "dualtoken_lite.unified", "format_version": 2, "kind": "unified",
                              "config": <UnifiedConfig>, "layout": <TokenLayout>, "tokenizer": <fingerprint>}
        model.safetensors    every tensor; the shipped folders store float16 (half the bytes), loaded as float32

``load_model(folder)`` rebuilds the UnifiedModel from the config, then loads the tensors strictly with the
tokenizer's own checks (model/pretrained.py): a missing, unexpected or mis-shaped tensor is an error naming it.
Safetensors holds tensors only: loading never runs code from the file. A folder of the separate readers and
class-conditional generators that the unified model replaced (format_version 1) is refused, naming what to use.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from dualtoken_lite.model.pretrained import CheckpointError, check_state_dict, match_dtypes, read_weights
from dualtoken_lite.model.token_layout import TokenLayout
from dualtoken_lite.settings import ConfigError, from_dict, missing_fields
from dualtoken_lite.unified.model import UnifiedConfig, UnifiedModel

FORMAT, FORMAT_VERSION = "dualtoken_lite.unified", 2
KINDS = {"unified": (UnifiedModel, UnifiedConfig)}
RETIRED_KINDS = ("reader", "generator")  # format_version 1: one model per task, no text


def save_model(model, folder: str | Path, half: bool = False, tokenizer: str | None = None) -> Path:
    """Write a UnifiedModel as ``config.json`` + ``model.safetensors`` (float16 tensors with ``half``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": FORMAT})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": model.kind,
              "config": dataclasses.asdict(model.cfg), "layout": dataclasses.asdict(model.layout),
              "tokenizer": tokenizer or getattr(model, "tokenizer_id", None)}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_config(folder: str | Path) -> dict:
    """A unified model folder's config.json, checked for format and kind."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {folder} is not a unified model folder (config.json + "
                              "model.safetensors, written by the unified trainers)")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if config.get("format") == FORMAT and config.get("kind") in RETIRED_KINDS:
        raise CheckpointError(f"{folder} holds a unified {config['kind']} of an earlier version (one model per task, "
                              "prompted by a class id, no text); it was replaced by one model that reads and writes "
                              "text and images: use data/unified/both, or train one with `python -m dualtoken_lite "
                              "train_unified`")
    if config.get("format") != FORMAT or config.get("kind") not in KINDS:
        raise CheckpointError(f"{path} is not a unified model (format={config.get('format')!r}, "
                              f"kind={config.get('kind')!r}); a tokenizer folder goes to the other commands")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {config['format_version']}, newer than this code's "
                              f"{FORMAT_VERSION}; update dualtoken_lite")
    return config


def load_model(folder: str | Path, kind: str | None = None):
    """Rebuild the model a folder describes and load its tensors strictly; eval mode, float32."""
    folder = Path(folder)
    config = read_config(folder)
    if kind is not None and config["kind"] != kind:
        raise CheckpointError(f"{folder} holds a {config['kind']}, not a {kind}")
    model_class, config_class = KINDS[config["kind"]]
    missing = missing_fields(config_class, config["config"], "config.")
    if missing:
        raise CheckpointError(f"{folder / 'config.json'} lacks the field(s) {missing}: it was not written by "
                              "this version of dualtoken_lite")
    try:
        cfg = from_dict(config_class, config["config"], "config")
        layout = TokenLayout(**config["layout"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
    model = model_class(cfg, layout)
    model.tokenizer_id = config.get("tokenizer")
    state = read_weights(folder / "model.safetensors")
    check_state_dict(model.state_dict(), state, str(folder / "model.safetensors"))
    model.load_state_dict(match_dtypes(model.state_dict(), state, str(folder)), strict=True)
    return model.float().eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
