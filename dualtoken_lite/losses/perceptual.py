"""Perceptual loss: LPIPS with a VGG16 backbone (Zhang et al. 2018), as in docs/method.md §3's reconstruction term.

LPIPS compares unit-normalised VGG16 features of x and x_hat at five depths, weights each channel with a learned
1x1 "linear" layer, averages over space and sums over depths. The `lpips` package ships the linear layers
(they load offline); the VGG16 trunk needs torchvision's ImageNet weights, which cannot be downloaded here.

So the backbone is never fetched by ``lpips``/torchvision (their ``pretrained=True`` path downloads). We build
the module with a random trunk and copy VGG16 weights in from a file we find ourselves:
    1. a path the user names (``vgg_weights=...``), else
    2. torch's hub cache: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``.
Without either we refuse, naming where to put the file, unless the user opts into a random backbone
(``allow_random_backbone=True``). That variant is not LPIPS any more, so ``.label`` says so for every log:
"lpips-vgg" for the real metric, "lpips-vgg(random backbone)" otherwise.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from dualtoken_lite.settings import MissingFile

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1 file name
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # for the user to fetch by hand
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # lpips' slice1..5 over vgg16.features indices
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # the 13 conv layers in vgg16.features
LABEL_REAL = "lpips-vgg"
LABEL_RANDOM = "lpips-vgg(random backbone)"


class PerceptualWeightsMissing(MissingFile):
    """The VGG16 ImageNet weights LPIPS needs are not on this machine (and no random backbone was allowed)."""


def default_vgg16_path() -> Path:
    """Where torchvision would cache VGG16: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def find_vgg16_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The user's file if given (it must exist), else the hub-cache file if present, else None."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise PerceptualWeightsMissing(
                f"vgg_weights={str(path)!r} is not a file; give the path of torchvision's VGG16 ImageNet "
                f"weights ({VGG16_FILENAME}, from {VGG16_URL})"
            )
        return path
    cached = default_vgg16_path()
    return cached if cached.is_file() else None


def read_vgg16_features(path: Path) -> dict[str, torch.Tensor]:
    """``features.*`` of a torchvision VGG16 state dict, renamed to lpips' ``slice1..5`` keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    mapped, missing = {}, []
    for k, (lo, hi) in enumerate(VGG16_SLICES, start=1):
        for i in (i for i in VGG16_CONV_INDICES if lo <= i < hi):
            for name in ("weight", "bias"):
                key = f"features.{i}.{name}"
                if key in state:
                    mapped[f"slice{k}.{i}.{name}"] = state[key]
                else:
                    missing.append(key)
    if missing:
        raise ValueError(
            f"{path} does not hold torchvision VGG16 weights: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}"
        )
    return mapped


class Perceptual(nn.Module):
    """Frozen LPIPS-VGG distance, mean over the batch; inputs (B, 3, h, w) in [-1, 1]."""

    def __init__(self, vgg_weights: str | os.PathLike | None = None, allow_random_backbone: bool = False):
        super().__init__()
        import lpips  # imported here: it pulls in torchvision, which only this module needs

        path = find_vgg16_weights(vgg_weights)
        if path is None and not allow_random_backbone:
            raise PerceptualWeightsMissing(
                f"LPIPS needs torchvision's VGG16 ImageNet weights and none were found. Put {VGG16_FILENAME} "
                f"(from {VGG16_URL}) at {default_vgg16_path()}, or pass its path (LossConfig.vgg_weights / "
                "vgg_weights=...). To run anyway with a randomly initialised VGG (not the LPIPS metric; logs "
                "say 'lpips-vgg(random backbone)'), set LossConfig.allow_random_lpips=True; or turn the term "
                "off with LossConfig.perceptual_weight=0."
            )
        features = read_vgg16_features(path) if path is not None else None  # fail fast, before building
        with warnings.catch_warnings():  # torchvision's deprecation notice about `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand=True: lpips builds tv.vgg16(weights=None), so nothing is downloaded; its own
            # linear-layer weights (weights/v0.1/vgg.pth inside the package) load offline.
            self.lpips = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        if features is not None:
            try:
                self.lpips.net.load_state_dict(features, strict=True)
            except RuntimeError as err:
                raise ValueError(f"{path} does not hold torchvision VGG16 weights (shapes differ): {err}") from err
        self.weights_path = path  # the VGG16 file used, or None for a random backbone
        self.label = LABEL_REAL if path is not None else LABEL_RANDOM  # log this next to the loss value
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Perceptual:
        """Stay in eval mode (LPIPS' linear layers have dropout that must never switch on)."""
        return super().train(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """LPIPS(x_hat, x) averaged over the batch: a scalar, differentiable w.r.t. x_hat only."""
        if x_hat.shape != x.shape or x_hat.dim() != 4 or x_hat.shape[1] != 3:
            raise ValueError(
                f"perceptual loss expects two (B, 3, h, w) images of one shape, got {tuple(x_hat.shape)} "
                f"and {tuple(x.shape)}"
            )
        return self.lpips(x_hat, x.detach()).mean().float()  # (B, 1, 1, 1) -> scalar

    def extra_repr(self) -> str:
        return f"label={self.label!r}, weights={self.weights_path}"


def build_perceptual(cfg) -> Perceptual | None:
    """The perceptual module a ``LossConfig`` asks for: None when ``perceptual_weight`` is 0 (nothing built)."""
    if cfg.perceptual_weight <= 0:
        return None
    return Perceptual(cfg.vgg_weights, allow_random_backbone=cfg.allow_random_lpips)
