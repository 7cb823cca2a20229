"""The training run's configuration: a dataclass with presets, command-line overrides and validation.

`python -m dualtoken_lite.train --preset tiny --lr 3e-4 --model.pixel_layer 3` = preset + overrides. Every
field of `TrainConfig` is a flag (`--batch_size` or `--batch-size`); model fields are `--model.<field>` and nested
ones `--model.pixel_quantizer.depth`; loss fields `--loss.<field>`. The original release's flags (SPEC §4) are
accepted too, with their meanings (`RELEASE_FLAGS`). The whole config is validated before any data is read.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, ModelConfig, model_preset, validate


@dataclass
class TrainConfig:
    """One training run (SPEC §4 for the paper's values)."""

    preset: str = "tiny"  # model/loss/train preset this run started from
    out: str = "runs/tiny"  # run folder: config.json, metrics.jsonl, checkpoints/, images/, summary.json
    train_data: str = "tinyworld"  # "tinyworld" (the bundled set, made on first use), shard pattern(s) or a folder
    eval_data: str | None = "tinyworld-eval"  # held-out set for PSNR / accuracy; None = no evaluation
    train_num_samples: int | None = None  # samples per epoch (the epoch length of a webdataset); None = one pass
    epochs: int = 1  # passes over train_num_samples (or the data); max_steps, when set, wins
    max_steps: int | None = 1200  # optimizer steps in total; None = epochs * steps_per_epoch
    batch_size: int = 32  # images per process per micro-batch
    grad_accum: int = 1  # micro-batches summed into one optimizer step (quantizer EMA moves once per step)
    lr: float = 1e-3  # peak AdamW learning rate of the tokenizer (paper: 7.2e-5)
    beta1: float = 0.9  # AdamW beta1 (paper: 0.5)
    beta2: float = 0.99  # AdamW beta2 (paper: 0.9)
    adam_eps: float = 1e-8  # AdamW epsilon (paper: 1e-8)
    weight_decay: float = 1e-4  # on weights with ndim >= 2 only; none on biases, norms, embeddings (paper: 1e-4)
    warmup_steps: int = 50  # linear warmup before the cosine decay (paper: 10,000)
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    stage: int = 1  # 0, 1 or 2 (SPEC §3): what is frozen and which losses are on
    gan_start_epoch: int | None = None  # 0-based epoch in whose second half the discriminator starts; None = no GAN
    gan_start_step: int | None = None  # the same in steps (wins over gan_start_epoch when both are set)
    restart_gan: int | None = None  # re-create the discriminator and its optimizer every N epochs after the start
    teacher: str = "shipped"  # distillation teacher: "shipped" (tiny world's, also the starting tower), "backbone"
    #                           (a frozen copy of the tower as built, e.g. pretrained SigLIP) or a teacher folder
    init_from: str | None = None  # start a new run from a model folder's weights (fresh optimizers): stage 1 -> 2
    resume: str | None = None  # continue a run: its folder, a checkpoints/step_* folder, or "auto" (= --out if any)
    seed: int = 0  # seeds python, numpy and torch on every rank (data order is derived from it too)
    deterministic: bool = False  # torch.use_deterministic_algorithms; with it, a resumed run equals an unbroken one
    device: str = "auto"  # "auto" (CUDA if available), "cpu" or "cuda"
    bf16: bool | None = None  # bf16 autocast; None = on with CUDA, off on the CPU
    workers: int = 0  # data-loader worker processes per rank
    threads: int | None = None  # torch CPU threads per process; None = torch's default
    log_every: int = 20  # steps between metrics.jsonl lines (and the progress-bar postfix)
    image_every: int = 200  # steps between reconstruction grids written to images/
    eval_every: int = 400  # steps between held-out evaluations (0 = only at the end)
    eval_samples: int = 512  # held-out images per evaluation
    save_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 3  # the N most recent checkpoints are kept
    tensorboard: bool = False  # also write TensorBoard event files (needs the tensorboard package)
    model: ModelConfig = field(default_factory=ModelConfig)  # the tokenizer (see config.py)
    loss: dict = field(default_factory=dict)  # overrides of the loss preset's LossConfig fields


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},  # the dataclass defaults are the tiny main job
    "so400m-384": dict(
        out="runs/so400m-384", train_data="", eval_data=None, train_num_samples=10_000_000, epochs=20,
        max_steps=None, batch_size=32, lr=7.2e-5, beta1=0.5, beta2=0.9, weight_decay=1e-4, warmup_steps=10_000,
        gan_start_epoch=0, restart_gan=20, teacher="backbone", workers=4, log_every=50, image_every=2000,
        eval_every=0, save_every=5000,
    ),
}
TRAIN_PRESETS["so400m-256"] = dict(TRAIN_PRESETS["so400m-384"], out="runs/so400m-256")


def train_preset(name: str) -> TrainConfig:
    """A fresh TrainConfig for a named preset, with its model preset inside."""
    if name not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    cfg = TrainConfig(preset=name, model=model_preset(name))
    for key, value in TRAIN_PRESETS[name].items():
        setattr(cfg, key, copy.deepcopy(value))
    return cfg


# The original release's command-line flags (SPEC §4) -> our field names.
RELEASE_FLAGS: dict[str, str] = {
    "--sem_weight": "loss.sem_weight",
    "--stage": "stage",
    "--name": "out",
    "--model": "preset",
    "--save-frequency": "save_every_epochs",
    "--train-data": "train_data",
    "--train-num-samples": "train_num_samples",
    "--dataset-type": "dataset_type",
    "--warmup": "warmup_steps",
    "--batch-size": "batch_size",
    "--lr": "lr",
    "--beta1": "beta1",
    "--beta2": "beta2",
    "--wd": "weight_decay",
    "--epochs": "epochs",
    "--gan_start_epoch": "gan_start_epoch",
    "--restart_gan": "restart_gan",
    "--workers": "workers",
}
# Release model-config names (SPEC §4 `--model`) -> our presets.
RELEASE_MODELS = {"model_config_siglip_384_rvq8": "so400m-384"}


def _parse_value(text: str, current: Any, name: str) -> Any:
    """Convert a command-line string to the type of the field's current value."""
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool) or current is None and text.lower() in ("true", "false"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--{name}={text!r}: expected true or false")
        return text.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):
        return tuple(int(v) for v in text.split(","))
    for kind in (int, float):
        if isinstance(current, kind) or current is None:
            try:
                return kind(text)
            except ValueError:
                if current is not None:
                    raise ConfigError(f"--{name}={text!r}: expected a {kind.__name__}") from None
    return text


def set_field(cfg: TrainConfig, dotted: str, text: str) -> None:
    """Set ``cfg.<dotted>`` (e.g. 'model.pixel_quantizer.depth') from a command-line string."""
    *parents, leaf = dotted.replace("-", "_").split(".")
    target: Any = cfg
    for part in parents:
        if not hasattr(target, part):
            raise ConfigError(f"--{dotted}: {type(target).__name__} has no field {part!r}")
        target = getattr(target, part)
    if isinstance(target, dict):  # loss overrides: typed later against LossConfig
        target[leaf] = _parse_value(text, None, dotted)
        return
    if leaf not in {f.name for f in dataclasses.fields(target)}:
        known = ", ".join(f.name for f in dataclasses.fields(target))
        raise ConfigError(f"--{dotted}: {type(target).__name__} has no field {leaf!r} (fields: {known})")
    setattr(target, leaf, _parse_value(text, getattr(target, leaf), dotted))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Preset + overrides (ours or the release's flags) -> a validated TrainConfig."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--model", default=None)  # the release's name for the preset
    known, rest = pre.parse_known_args(argv)
    preset = known.preset or RELEASE_MODELS.get(known.model or "", known.model) or "tiny"
    cfg = train_preset(preset)
    pairs = _pairs(rest)
    save_every_epochs = None
    for flag, value in pairs:
        dotted = RELEASE_FLAGS.get(flag, flag[2:])
        if dotted == "dataset_type":
            if value not in ("webdataset", "folder", "tinyworld"):
                raise ConfigError(f"--dataset-type={value!r}: use webdataset, folder or tinyworld")
            continue  # the source kind is recognised from train_data itself
        if dotted == "save_every_epochs":
            save_every_epochs = int(value)
            continue
        if dotted == "out" and flag == "--name":
            value = f"runs/{value}"
        set_field(cfg, dotted, value)
    if save_every_epochs is not None:
        cfg.save_every = -save_every_epochs  # negative = in epochs; resolved once steps_per_epoch is known
    return validate_train(cfg)


def _pairs(rest: list[str]) -> list[tuple[str, str]]:
    """['--a=1', '--b', '2', '--flag'] -> [('--a','1'), ('--b','2'), ('--flag','true')]."""
    out, i = [], 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options look like --name value or --name=value")
        if "=" in token:
            flag, value = token.split("=", 1)
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            flag, value = token, rest[i + 1]
            i += 1
        else:
            flag, value = token, "true"
        out.append((flag, value))
        i += 1
    return out


def validate_train(cfg: TrainConfig) -> TrainConfig:
    """Check a run's config before any data is read; raise ConfigError naming the value and the fix."""
    validate(cfg.model)
    positive = ("batch_size", "grad_accum", "epochs", "log_every", "keep_checkpoints", "eval_samples")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps={cfg.max_steps} must be >= 1 (or None to run epochs)")
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be > 0")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} must lie in [0, 1)")
    if cfg.warmup_steps < 0 or cfg.weight_decay < 0:
        raise ConfigError(f"warmup_steps={cfg.warmup_steps} and weight_decay={cfg.weight_decay} must be >= 0")
    if cfg.stage not in (0, 1, 2):
        raise ConfigError(f"stage={cfg.stage}: DualToken has stages 0, 1 and 2 (SPEC §3)")
    if cfg.stage == 2 and cfg.model.semantic_layer is None:
        raise ConfigError("stage=2 trains the semantic branch only, but model.semantic_layer is None")
    if cfg.resume and cfg.init_from:
        raise ConfigError("--resume continues a run and --init-from starts a new one: give only one")
    if not cfg.train_data:
        raise ConfigError("train_data is empty: give --train-data (shards like 'cc12m-{0000..2175}.tar' or a folder)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r}: use auto, cpu or cuda")
    return cfg
