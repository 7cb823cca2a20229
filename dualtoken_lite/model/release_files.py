"""Reading the authors' files: a release checkpoint's tensors and a release ``config.json``'s model settings.

Checkpoints are torch pickles (the release's ``main.py`` saves ``{"epoch", "name", "state_dict", "optimizer"}``)
or safetensors. Pickles are read with ``torch.load(weights_only=True)``, which runs no code from the file; one that
needs a full unpickle is refused with the reason unless the caller trusts it. A file that is not a checkpoint
(empty, text, truncated) is a ``ReleaseFormatError`` naming it: the command line prints one line and exits 2.
A release config nests the model's settings under ``rqvaesiglip`` (its ``model_config_*/config.json``); the
early code's config is flat. Which layout and which settings they describe: ``model/release_config.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dualtoken_lite.settings import UserError


class ReleaseFormatError(UserError, RuntimeError):
    """A file is not a release checkpoint or config we can convert; the message says what is wrong and what to do."""


def read_release_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of a release checkpoint (.pt/.bin torch pickle, or .safetensors), unwrapped and unprefixed.

    Torch pickles are read with ``weights_only=True``, which runs no code from the file. A file that needs more
    is refused with the reason, unless ``trust_pickle`` (then: a full unpickle, with a warning). A file that is
    not a checkpoint at all (empty, text, truncated) is a ReleaseFormatError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ReleaseFormatError(f"{path}: no such release checkpoint file")
    if path.stat().st_size == 0:
        raise ReleaseFormatError(f"{path} is empty: not a checkpoint; copy or download it again")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ReleaseFormatError(f"{path} cannot be read as safetensors ({err}); the file is damaged or not "
                                     "a checkpoint") from None
    elif trust_pickle:
        warnings.warn(f"--trust-pickle: unpickling {path} fully; this runs any code stored in the file", stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        obj = _safe_torch_load(path)
    for key in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ReleaseFormatError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _safe_torch_load(path: Path):
    """``torch.load(weights_only=True)``, its failures told apart: unsafe content vs not a torch file at all."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err).strip()
        if "Unsupported global" in text or "Unsupported class" in text:  # a real pickle with more than tensors
            reason = next((line for line in text.splitlines() if "Unsupported" in line), text.splitlines()[0])
            raise ReleaseFormatError(
                f"{path} holds more than tensors, and torch's safe loader (weights_only=True) refuses it: "
                f"{reason.strip()}. A full unpickle runs code stored in the file. If you trust where it came "
                "from, rerun with --trust-pickle") from None
        raise ReleaseFormatError(f"{path} is not a readable torch checkpoint ({_first_line(text)})") from None
    except Exception as err:  # the file is the user's: parsing garbage raises a dozen kinds (EOF, Key, Runtime...)
        raise ReleaseFormatError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: "
                                 f"{_first_line(str(err))}); the file is damaged, truncated or of another kind") from None


def _first_line(text: str) -> str:
    """The first non-empty line of an error message (torch's run to dozens of lines)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def read_release_config(path: str | os.PathLike) -> dict:
    """The model settings of a release ``config.json`` (the file or its folder): its ``rqvaesiglip`` dict."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReleaseFormatError(f"{path}: no such release config file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ReleaseFormatError(f"{path} is not JSON ({err})") from None
    settings = data.get("rqvaesiglip", data) if isinstance(data, dict) else None
    if not isinstance(settings, dict) or not ("vq_pix" in settings or "embed_dim" in settings):
        raise ReleaseFormatError(f"{path} is not a DualToken release config (no rqvaesiglip.vq_pix or embed_dim); "
                                 "give the config.json of the release's model_config_* folder")
    return settings
