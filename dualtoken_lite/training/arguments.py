"""The command line of ``python -m dualtoken_lite.train`` and the run folder's saved config -> a ``TrainConfig``.

`python -m dualtoken_lite.train --preset tiny --lr 3e-4 --model.pixel_layer 3` = preset + overrides. Every
field of `TrainConfig` is a flag (`--batch_size` or `--batch-size`); model fields are `--model.<field>` and nested
ones `--model.pixel_quantizer.depth`; loss fields `--loss.<field>`. The original release's flags (docs/method.md
§4) are accepted too, with their meanings (`RELEASE_FLAGS`). The whole config is validated before any data is read.

``load_run_config`` reads a run folder's ``config.json`` back into the ``TrainConfig`` that wrote it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any

from dualtoken_lite.losses import config as loss_config
from dualtoken_lite.model import config as model_config
from dualtoken_lite.model.release_config import RELEASE_MODELS
from dualtoken_lite.quantizers import residual
from dualtoken_lite.settings import ConfigError, from_dict, missing_fields
from dualtoken_lite.training import config as train_config
from dualtoken_lite.training.config import TrainConfig, validate_train
from dualtoken_lite.training.presets import preset as named_preset

# The original release's command-line flags (docs/method.md §4) -> our field names.
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
    "--accum-freq": "grad_accum",  # micro-batches per optimizer step (the release parsed it but never applied it)
    "--grad-clip-norm": "grad_clip_norm",
    "--seed": "seed",
    "--load_from": "init_from",  # stage 2 starts from stage 1's weights: a model folder or a release checkpoint file
    "--resume": "resume",  # "latest" = the newest checkpoint of this run (our "auto")
    "--precision": "bf16",  # translated by RELEASE_VALUES
    "--lr-scheduler": "min_lr_ratio",  # translated by RELEASE_VALUES
    "--report-to": "tensorboard",  # translated by RELEASE_VALUES
    "--imagenet-val": "imagenet_val",  # refused by RELEASE_VALUES: evaluate after training
}
KEEP = "<keep the preset's value>"
# Release flag values -> ours; None or a value not listed = refused (the message names our equivalent).
RELEASE_VALUES: dict[str, dict[str, str | None]] = {
    "--precision": {"amp_bf16": "true", "amp_bfloat16": "true", "fp32": "false", "amp": None, "fp16": None,
                    "bf16": None, "pure_bf16": None, "pure_fp16": None},
    "--lr-scheduler": {"cosine": KEEP, "const": "1.0", "const-cooldown": None},
    "--report-to": {"tensorboard": "true", "": "false", "none": "false", "wandb": None, "wandb,tensorboard": None},
}
REFUSALS = {
    "--precision": "weights stay fp32 here, with optional bf16 autocast: use --precision amp_bf16 (= --bf16 true) "
                   "or --precision fp32 (= --bf16 false)",
    "--lr-scheduler": "the schedule is warmup + cosine to lr x --min_lr_ratio: use --lr-scheduler cosine, "
                      "--lr-scheduler const (= --min_lr_ratio 1), or set --min_lr_ratio",
    "--report-to": "metrics go to RUN/metrics.jsonl, and to TensorBoard with --report-to tensorboard "
                   "(= --tensorboard true); there is no wandb logger",
    "--imagenet-val": "zero-shot is not run during training; evaluate the trained model afterwards: "
                      "python -m dualtoken_lite evaluate RUN --data IMAGENET_VAL --zero-shot",
}


def release_value(flag: str, value: str) -> str:
    """A release flag's value in our terms (``--precision amp_bf16`` -> "true"), or a ConfigError naming ours."""
    if flag == "--imagenet-val":
        raise ConfigError(f"{flag} {value}: {REFUSALS[flag]}")
    if flag == "--resume":
        return "auto" if value == "latest" else value
    if flag not in RELEASE_VALUES:
        return value
    ours = RELEASE_VALUES[flag].get(value)
    if ours is None:
        raise ConfigError(f"{flag} {value}: {REFUSALS[flag]}")
    return ours


def _parse_value(text: str, current: Any, name: str) -> Any:
    """Convert a command-line string to the type of the field's current value."""
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool) or current is None and text.lower() in ("true", "false"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--{name}={text!r}: expected true or false")
        return text.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):  # "0.5,0.9" -> (0.5, 0.9); element type from the current value
        kind = float if any(isinstance(v, float) for v in current) else int
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"--{name}={text!r}: expected comma-separated {kind.__name__}s") from None
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
    if leaf not in {f.name for f in dataclasses.fields(target)}:
        known = ", ".join(f.name for f in dataclasses.fields(target))
        raise ConfigError(f"--{dotted}: {type(target).__name__} has no field {leaf!r} (fields: {known})")
    setattr(target, leaf, _parse_value(text, getattr(target, leaf), dotted))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Preset + overrides (ours or the release's flags) -> a validated TrainConfig."""
    return parse_command_line(argv)[0]


def parse_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """Preset + overrides -> (a validated TrainConfig, the dotted names of the fields the command line set)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--model", default=None)  # the release's name for the preset
    pre.add_argument("-h", "--help", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.help:
        print(field_help())
        raise SystemExit(0)
    preset = known.preset or RELEASE_MODELS.get(known.model or "", known.model) or "tiny"
    cfg = named_preset(preset)
    pairs = flag_pairs(rest)
    save_every_epochs = None
    given = {"preset"} if known.preset or known.model else set()
    for flag, value in pairs:
        dotted = RELEASE_FLAGS.get(flag, flag[2:]).replace("-", "_")
        if flag in RELEASE_FLAGS:
            value = release_value(flag, value)
            if value == KEEP:
                continue
        given.add("save_every" if dotted == "save_every_epochs" else dotted)
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
    return validate_train(cfg), given - {"dataset_type"}


def field_help() -> str:
    """Every flag with its default and the comment its dataclass field carries (the config files are the docs)."""
    comments = {}
    for module in (train_config, model_config, loss_config, residual):
        for name, comment in re.findall(r"^    (\w+): [^=\n]+= .*?  # (.*)$", inspect.getsource(module), re.M):
            comments.setdefault(name, comment)

    def walk(obj, prefix: str) -> list[str]:
        lines = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines += walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  --{prefix}{f.name} {value!r}".ljust(48) + f" {comments.get(f.name, '')}")
        return lines

    head = ("usage: python -m dualtoken_lite.train [--preset NAME] [--FIELD VALUE ...]\n\n"
            "Presets: tiny (default), so400m-384, so400m-256. Every field below is a flag (dashes or underscores);\n"
            "the values shown are the tiny preset's. The original release's flags work too: "
            + " ".join(RELEASE_FLAGS) + ".\n")
    return head + "\n".join(walk(named_preset("tiny"), ""))


def flag_pairs(rest: list[str]) -> list[tuple[str, str]]:
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


def load_run_config(path: str | Path) -> TrainConfig:
    """The ``TrainConfig`` saved in a run folder's ``config.json`` (``path`` = the file or its run folder): every
    field, checked by type; a file that lacks some (written by another version, or edited) is refused naming them."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    data = json.loads(path.read_text())
    missing = missing_fields(TrainConfig, data)
    if missing:
        raise ConfigError(f"{path} lacks the field(s) {missing}: it was not written by this version of "
                          "dualtoken_lite's trainer; start a new run (--out) instead of resuming it")
    return validate_train(from_dict(TrainConfig, data, str(path)))
