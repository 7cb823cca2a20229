"""Metrics that need more than this package: rFID (Inception-v3 features) and open_clip zero-shot accuracy.

Each is set up before any image is read, or refused with ``MetricUnavailable`` naming the missing package or
weights (docs/method.md §6):

    fid = build_fid()                                              # torchmetrics FID, TF-Inception 2015-12-05 port
    head = build_zero_shot_head(arch, "webli", load_classnames("imagenet"))   # (B, E) -> (B, 1000) logits
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from dualtoken_lite.evaluation.zero_shot import ZeroShotHead, build_head
from dualtoken_lite.settings import UserError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's port of the TF Inception-v3
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE


class MetricUnavailable(UserError, RuntimeError):
    """A requested metric needs a package or weights that are not on this machine; the message says which."""


def default_inception_path() -> Path:
    """Where torch-fidelity caches its Inception weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def build_fid(feature: nn.Module | None = None, inception_weights: str | os.PathLike | None = None):
    """torchmetrics' FID on uint8 (B, 3, h, w) images; ``feature`` replaces Inception-v3 (any (B, 3, h, w) -> (B, F))."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is not None:
        fid = FrechetInceptionDistance(feature=feature, normalize=False)
        fid.features_label = f"custom: {type(feature).__name__}"
    else:
        how = (f"Get it with `pip install torch-fidelity` (or `pip install torchmetrics[image]`) and put "
               f"{INCEPTION_FILE} (from {INCEPTION_URL}) at {default_inception_path()} or pass --inception-weights.")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise MetricUnavailable(f"rFID needs the `torch-fidelity` package (its Inception-v3 port), which is not "
                                    f"installed. {how}")
        path = Path(inception_weights).expanduser() if inception_weights else default_inception_path()
        if not path.is_file():
            raise MetricUnavailable(f"rFID needs the Inception-v3 weights file {path}, which does not exist. {how}")
        fid = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(path))
        fid.features_label = "inception-v3 pool3 (torch-fidelity, TF 2015-12-05 weights)"
    fid.set_dtype(torch.float64)  # torchmetrics recommends float64: the matrix square root is unstable in float32
    return fid


# ------------------------------------------------------------------------------------------------- zero-shot
def load_classnames(spec: str) -> list[str]:
    """'imagenet' -> open_clip's 1,000 ImageNet class names (label order); a path -> one name per line."""
    if spec == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"--classnames {spec!r}: use 'imagenet' or a text file with one class name per line")
    return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]


def build_zero_shot_head(arch: str, text_weights: str, classnames: list[str], templates: str = "openai",
                         device: str | torch.device = "cpu") -> ZeroShotHead:
    """open_clip's zero-shot classifier (class names x templates) for a SigLIP ``arch`` with its text tower."""
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise MetricUnavailable(f"zero-shot needs an open_clip SigLIP model with a text tower; {arch!r} has none "
                                "(the tiny world's zero-shot uses its teacher's text tower: --teacher)")
    try:  # cheap checks first: the tokenizer, then the weights, before building ~900 M parameters
        tokenizer = open_clip.get_tokenizer(arch)
    except (ImportError, OSError, ValueError) as err:
        raise MetricUnavailable(
            f"zero-shot needs {arch!r}'s text tokenizer, which could not be loaded ({type(err).__name__}: {err}). "
            "SigLIP's tokenizer needs the `transformers` package (pip install transformers) and its tokenizer "
            "files in the Hugging Face cache (run open_clip.get_tokenizer once on a machine with internet)"
        ) from err
    local = os.path.exists(text_weights)
    if not local:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if text_weights not in tags:
            raise MetricUnavailable(f"--text-weights {text_weights!r} is neither a file nor a tag of {arch!r} ({tags})")
        try:
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, text_weights))
        except Exception as err:  # hub errors differ by version; all mean "not here"
            raise MetricUnavailable(
                f"zero-shot needs the text tower weights of {arch!r} / {text_weights!r}, which are not in the "
                f"Hugging Face cache ({type(err).__name__}). Fetch them once with open_clip.create_model({arch!r}, "
                f"pretrained={text_weights!r}) on a machine with internet, or pass --text-weights FILE"
            ) from err
    clip = open_clip.create_model(arch, pretrained=text_weights, device=device).eval()
    chosen = open_clip.OPENAI_IMAGENET_TEMPLATES if templates == "openai" else open_clip.SIMPLE_IMAGENET_TEMPLATES
    return build_head(clip, tokenizer, classnames, list(chosen), device)  # the tiny world's path too (zero_shot.py)
