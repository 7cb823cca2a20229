"""Model checkpoints: one folder with ``config.json`` and ``model.safetensors`` (the layout every command takes).

    run/checkpoint-best/
        config.json          {"format": "dualtoken_lite", "format_version": 2, "model": <ModelConfig as a dict>}
        model.safetensors    every parameter and buffer, codebooks included (EMA counts and averages too)

Loading is strict (the release's evaluation and inference scripts swallow a failed strict load and go on with the
weights the model was built with, docs/method.md §7.4): the file's tensor names and shapes are compared with the
model built from the saved config, and any missing, unexpected or mis-shaped tensor is an error that lists them. The model is first built on the meta device (no
random initialisation of hundreds of millions of weights) and then takes the stored tensors as they are, so a
round trip is exact.

Format version 2 stores the tower's activation (``backbone.activation``: exact or tanh GELU); a version-1 folder
has none and loads with exact GELU, the network it always loaded as (``model_config_from_dict``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dualtoken_lite.model.config import ModelConfig, model_config_from_dict
from dualtoken_lite.settings import ConfigError, UserError, to_dict

FORMAT = "dualtoken_lite"
FORMAT_VERSION = 2  # bump when the tensor names or the config layout change (2: backbone.activation stored)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint folder is missing, from another format, or does not match the model it describes."""


def save_pretrained(model, directory: str | Path) -> Path:
    """Write the model's config and all its tensors to ``directory`` (created if needed); return the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": to_dict(model.cfg)}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged, truncated or empty file is a CheckpointError naming it."""
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as safetensors ({err}); the file is damaged or truncated: "
                              "copy or save it again") from None


def match_dtypes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str
                 ) -> dict[str, torch.Tensor]:
    """Float tensors of another float dtype (float64, float16, bfloat16) are cast to the model's; a float where
    the model keeps integers (or the reverse) is refused."""
    out = {}
    for name, tensor in found.items():
        want = expected[name].dtype
        if tensor.dtype != want:
            if not (tensor.is_floating_point() and torch.empty((), dtype=want).is_floating_point()):
                raise CheckpointError(f"{source}: tensor {name} has dtype {tensor.dtype}, the model keeps {want}; "
                                      "the file was not written by save_pretrained")
            tensor = tensor.to(want)
        out[name] = tensor
    return out


def load_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig stored in a checkpoint folder, after checking the format and its version."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a checkpoint folder written by save_pretrained")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore it or save the model again") from None
    if config.get("format") != FORMAT or not isinstance(config.get("format_version"), int):
        raise CheckpointError(f"{path} is not a {FORMAT} config (format={config.get('format')!r})")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {config['format_version']}, newer than this code's {FORMAT_VERSION}; "
            "update dualtoken_lite"
        )
    try:
        return model_config_from_dict(config["model"], "model")
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def _listing(keys: list[str], limit: int = 10) -> str:
    """A short printable list of tensor names."""
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors (no silent partial load)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(found)
        if tuple(found[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [f"missing keys: {_listing(missing)}" if missing else "",
                 f"unexpected keys: {_listing(unexpected)}" if unexpected else "",
                 f"shape mismatches: {_listing(shapes)}" if shapes else ""]
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(p for p in parts if p))


def load_pretrained(model_class: type, directory: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a folder describes (``model_class(config)``) and load its tensors strictly; eval mode.

    ``DualToken.from_pretrained(directory)`` calls this with its own class, so this module never imports the model.
    """
    directory = Path(directory)
    cfg = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found next to {CONFIG_NAME}")
    state = read_weights(weights, device)
    start = cfg.backbone.pretrained
    cfg.backbone.pretrained = None  # the starting weights are in the file: do not fetch them again
    with torch.device("meta"):
        model = model_class(cfg)
    model.cfg.backbone.pretrained = start  # keep the provenance in the config
    check_state_dict(model.state_dict(), state, str(weights))
    state = match_dtypes(model.state_dict(), state, str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta:  # a tensor outside the state dict (non-persistent) would be left uninitialised
        raise CheckpointError(f"tensors not stored in {weights}: {_listing(still_meta)}")
    return model.eval()
