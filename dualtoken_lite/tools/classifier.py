"""Train the tiny world's attribute classifier: ``python -m dualtoken_lite classifier --out FOLDER``.

    python -m dualtoken_lite classifier --out data/classifier            # the shipped recipe (the card says how long)
    python -m dualtoken_lite classifier --out runs/clf --steps 200       # a quick one

The model, its reading and its loading: ``tinyworld/classifier.py``. The recipe: cross-entropy summed over the four
attributes (weighted, ``loss_weights``), AdamW with a linear warmup and a cosine decay (training/optim.py), every
image under a random flip / quarter turn (``caption_batches.dihedral``: none of the four attributes changes under
it), training images drawn from the train split (samples 0 .. pool_size - 1), never from eval. The folder gets
``classifier.safetensors`` (float16) and ``classifier.json`` (the card: recipe, train minutes, threads, load average,
and the held-out accuracy of each attribute on eval images 0-1023 measured on the saved weights loaded back). A
folder that already holds a classifier is replaced only with ``--overwrite``; the run is minutes long and keeps no
checkpoints.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dualtoken_lite.settings import ConfigError, UserError, require_at_least, require_finite
from dualtoken_lite.tinyworld.caption_batches import dihedral, draw_pool
from dualtoken_lite.tinyworld.classifier import (
    ATTRIBUTES,
    CARD_FILE,
    DETAIL_GAIN,
    GROUPS,
    HELD_OUT,
    TEXTURE_WIDTH,
    WEIGHTS_FILE,
    WIDTHS,
    AttributeClassifier,
    accuracy,
    attribute_labels,
    held_out_set,
    load_classifier,
    save_classifier,
    write_card,
)
from dualtoken_lite.tinyworld.drawing import to_tensor
from dualtoken_lite.training.optim import build_schedule, decay_groups
from dualtoken_lite.training.run_folder import NonFiniteError


@dataclass
class ClassifierConfig:
    """How the attribute classifier is built and trained (the defaults are the shipped recipe)."""

    steps: int = 2000  # optimizer steps
    batch_size: int = 32  # images per step
    lr: float = 2e-3  # AdamW peak learning rate, reached at the end of the warmup
    warmup_steps: int = 50  # linear warmup from 0 to lr
    final_lr_ratio: float = 0.02  # the cosine decays to lr * final_lr_ratio
    weight_decay: float = 0.05  # AdamW decoupled weight decay on conv and linear weights (none on biases, norms)
    grad_clip: float = 1.0  # max global gradient norm
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    widths: tuple[int, ...] = WIDTHS  # channels of the stride-2 stages: 64 px / 2**len(widths) at the end
    groups: int = GROUPS  # GroupNorm groups (each width must divide by it)
    texture_width: int = TEXTURE_WIDTH  # channels of the first stage that read the pixels' detail (the rest read the pixels)
    detail_gain: float = DETAIL_GAIN  # the detail's gain: tanh(gain * high-pass) (``detail``)
    loss_weights: tuple[float, ...] = (1.0, 1.0, 2.0, 1.0)  # weight of each attribute's cross-entropy in the sum, in
    #   ATTRIBUTES order (shape, colour, fill, background): fill's faint textures are learned last (at weight 1 its
    #   head stays at its prior while the other three hold the trunk), so it weighs double
    pool_size: int = 16384  # training images drawn up front: train split samples 0 .. pool_size - 1
    augment: bool = True  # a random flip / quarter turn per image (caption_batches.dihedral)
    seed: int = 0  # seeds the weights and the batch order
    threads: int = 1  # torch CPU threads (drawing the pool uses one process per thread)


def validate_config(cfg: ClassifierConfig) -> ClassifierConfig:
    """Refuse a config that cannot train, naming the value and the fix."""
    require_finite(cfg)  # --lr inf, ...
    require_at_least(cfg, ("steps", "batch_size", "pool_size", "threads", "groups"), 1)
    require_at_least(cfg, ("warmup_steps",), 0)
    if not cfg.widths or any(w < 1 or w % cfg.groups for w in cfg.widths):
        raise ConfigError(f"widths={cfg.widths}: give one or more stage widths, each divisible by groups={cfg.groups}")
    per_group = cfg.widths[0] // cfg.groups  # the stem's two parts keep whole GroupNorm groups of this many channels
    if not 0 < cfg.texture_width < cfg.widths[0] or cfg.texture_width % per_group:
        raise ConfigError(f"texture_width={cfg.texture_width}: give a multiple of {per_group} (widths[0] / groups) "
                          f"below widths[0]={cfg.widths[0]}")
    if len(cfg.loss_weights) != len(ATTRIBUTES) or min(cfg.loss_weights) < 0:
        raise ConfigError(f"loss_weights={cfg.loss_weights}: give {len(ATTRIBUTES)} weights >= 0, one per attribute "
                          f"of {ATTRIBUTES}")
    if cfg.detail_gain <= 0:
        raise ConfigError(f"detail_gain={cfg.detail_gain}: give a gain > 0")
    if cfg.batch_size > cfg.pool_size:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds pool_size={cfg.pool_size}; draw a larger pool")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"label_smoothing={cfg.label_smoothing} must lie in [0, 1)")
    return cfg


def train_classifier(cfg: ClassifierConfig, images: np.ndarray, labels: dict[str, np.ndarray],
                     progress: bool = True) -> AttributeClassifier:
    """Train an AttributeClassifier from scratch on ``images`` (uint8 (N, 64, 64, 3)) and their ``labels``
    ({attribute: (N,)}); returns it in eval mode."""
    validate_config(cfg)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = AttributeClassifier(cfg.widths, cfg.groups, cfg.texture_width, cfg.detail_gain).train()
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio)
    pool = torch.from_numpy(images)  # (N, 64, 64, 3) uint8
    targets = {a: torch.from_numpy(labels[a]) for a in ATTRIBUTES}  # {a: (N,)}
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="train classifier", unit="step", disable=not progress, mininterval=2.0)
    running = None  # exponential average of the loss, for the progress bar
    for step in bar:
        idx = torch.randint(0, len(pool), (cfg.batch_size,), generator=g)
        x = to_tensor(pool[idx].numpy())  # (B, 3, 64, 64) in [-1, 1]
        if cfg.augment:
            x = dihedral(x, torch.randint(0, 8, (cfg.batch_size,), generator=g))
        logits = model(x)
        # the weighted sum of the four attributes' cross-entropies: each head learns as if alone, the trunk serves all
        loss = sum(w * F.cross_entropy(logits[a], targets[a][idx], label_smoothing=cfg.label_smoothing)
                   for a, w in zip(ATTRIBUTES, cfg.loss_weights))
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite loss at step {step + 1} (--lr {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    bar.close()
    return model.eval()


# ----------------------------------------------------------------------------------------------------- the command
def refuse_existing(folder: Path, overwrite: bool) -> None:
    """An --out folder that already holds a classifier is replaced only when asked (``--overwrite``)."""
    held = [f for f in (WEIGHTS_FILE, CARD_FILE) if (folder / f).exists()]
    if held and not overwrite:
        raise UserError(f"--out {folder} already holds a classifier ({', '.join(held)}); give --overwrite to "
                        "replace it, or choose another --out folder")


def run(cfg: ClassifierConfig, out: Path, command: str = "", progress: bool = True) -> dict:
    """Draw the pool, train, save into ``out``, measure the saved weights on held-out images; return the card."""
    load_before = os.getloadavg()
    start, cpu_start = time.time(), time.process_time()
    images, metas = draw_pool(cfg.pool_size, "train", workers=cfg.threads)  # train samples 0 .. pool_size - 1
    draw_seconds = time.time() - start
    print(f"drew {len(images)} training images in {draw_seconds:.0f} s", flush=True)
    model = train_classifier(cfg, images, attribute_labels(metas), progress=progress)
    card = {"command": command, "recipe": asdict(cfg), "train_minutes": round((time.time() - start) / 60, 2),
            "draw_minutes": round(draw_seconds / 60, 2),
            "train_cpu_minutes": round((time.process_time() - cpu_start) / 60, 2), "threads": cfg.threads,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "machine": f"{os.cpu_count()}-core {platform.processor() or platform.machine()} CPU, "
                       f"torch {torch.__version__}",
            "weights_dtype": "float16 (loaded as float32)"}
    save_classifier(model, card, out)
    first, count = HELD_OUT
    card["held_out"] = f"eval images {first}-{first + count - 1}"
    card["accuracy"] = accuracy(load_classifier(out), *held_out_set(first, count))  # the saved float16 weights
    write_card(out, card, model)
    return card


def parse_command_line(argv: list[str]) -> tuple[ClassifierConfig, Path, bool]:
    """``--field value`` flags onto ClassifierConfig (``--widths 32,64,128,128``); the config, --out, --overwrite."""
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite classifier",
                                     description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS)
    parser.add_argument("--out", required=True, help="folder to write classifier.safetensors + classifier.json in")
    parser.add_argument("--overwrite", action="store_true", default=False, help="replace a classifier in --out")
    defaults = ClassifierConfig()
    for f in fields(ClassifierConfig):
        value, flag = getattr(defaults, f.name), f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, type=lambda t: t.lower() in ("1", "true", "yes"), help=f"(default {value})")
        elif isinstance(value, tuple):
            kind = type(value[0])  # int widths, float weights
            parser.add_argument(flag, type=lambda t, kind=kind: tuple(kind(v) for v in t.split(",")),
                                help=f"comma-separated (default {','.join(map(str, value))})")
        else:
            parser.add_argument(flag, type=type(value), help=f"(default {value!r})")
    args = vars(parser.parse_args(argv))
    out, overwrite = Path(args.pop("out")), args.pop("overwrite")
    return validate_config(ClassifierConfig(**args)), out, overwrite


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, out, overwrite = parse_command_line(argv)
    refuse_existing(out, overwrite)  # before any work
    card = run(cfg, out, command="python -m dualtoken_lite classifier " + " ".join(argv))
    print(f"wrote {out / WEIGHTS_FILE} and {out / CARD_FILE} in {card['train_minutes']} min; held-out accuracy "
          f"({card['held_out']}): " + "  ".join(f"{a} {v:.3f}" for a, v in card["accuracy"].items()))
    return 0
