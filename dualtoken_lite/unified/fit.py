"""The training loop both unified trainers share, built from the tokenizer trainer's parts (training/).

    summary = fit(model, cfg, batch_loss, data_size)     # cfg: a trainer config with .out/.resume/.loop

One step: draw ``batch_size`` row indices of the token cache from the run's own seeded generator, ``batch_loss``
-> AdamW (weight decay on matrices only, training/optim.decay_groups) with warmup + cosine
(training/optim.build_schedule) and gradient clipping. A run folder holds

    config.json  metrics.jsonl (training/logs.MetricsLogger)  checkpoints/step_*/ (training/checkpoints)
    model/ (the final weights, float16)  summary.json (what the trainer measured)

Checkpoints are written atomically and hold the model (safetensors), the optimizer, the schedule, the batch
generator and every RNG (loaded with weights_only=True), so ``--resume auto`` continues a killed run where it
stopped. ``parse_overrides`` turns ``--field value`` / ``--loop.steps 100`` / ``--model.width 96`` into the config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dualtoken_lite.model.pretrained import check_state_dict, read_weights
from dualtoken_lite.settings import (
    ConfigError,
    UserError,
    atomic_write_text,
    require_at_least,
    require_finite,
    to_dict,
)
from dualtoken_lite.training.arguments import set_field
from dualtoken_lite.training.checkpoints import (
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    resume_point,
    save_checkpoint,
)
from dualtoken_lite.training.logs import MetricsLogger, truncate_metrics
from dualtoken_lite.training.optim import build_schedule, decay_groups, warmup_cosine
from dualtoken_lite.training.precision import precision_context
from dualtoken_lite.training.run_folder import clear_run as clear_folder
from dualtoken_lite.unified.token_cache import fingerprint
from dualtoken_lite.unified.weights import count_parameters, load_model, save_model

# settings a resumed run may change; everything else must equal the run's saved config.json
RESUMABLE = {"loop.steps", "loop.log_every", "loop.save_every", "loop.keep_checkpoints", "loop.threads", "resume",
             "overwrite"}


@dataclass
class LoopConfig:
    """The optimisation and book-keeping of one unified training run."""

    steps: int = 1500  # optimizer steps
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warmup, then cosine decay
    min_lr_ratio: float = 0.05  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.05  # AdamW decoupled weight decay on matrices (none on biases, norms, embeddings)
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0  # seeds the weights, the batch order and the class dropout
    threads: int = 1  # torch CPU threads
    bf16: bool = False  # bf16 autocast of the forward pass (weights, optimizer and loss stay fp32; training/precision.py)
    log_every: int = 50  # steps between lines of metrics.jsonl
    save_every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept

    def validate(self) -> LoopConfig:
        """Raise ConfigError naming a bad field; return self."""
        require_finite(self, "loop")
        require_at_least(self, ("steps", "batch_size", "threads", "log_every", "keep_checkpoints"), 1, where="loop.")
        require_at_least(self, ("warmup_steps", "save_every"), 0, where="loop.")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ConfigError(f"loop: need lr > 0 (got {self.lr}), 0 <= min_lr_ratio <= 1 (got {self.min_lr_ratio}),"
                              f" weight_decay >= 0 (got {self.weight_decay}), grad_clip > 0 (got {self.grad_clip})")
        return self


def parse_overrides(cfg, argv: list[str], usage: str):
    """Apply ``--name value`` pairs to a trainer config; loop fields may drop their ``loop.`` prefix."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {usage}\n\nfields (--name value):\n" + "\n".join(f"  --{k} (default {v!r})"
                                                                 for k, v in flat_config(cfg).items()))
        sys.exit(0)
    loop_fields = {f.name for f in dataclasses.fields(LoopConfig)}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("--"):
            raise ConfigError(f"unexpected argument {flag!r}: every setting is --name value (see --help)")
        name, _, value = flag[2:].partition("=")
        if not value:
            if i + 1 >= len(argv):
                raise ConfigError(f"{flag} needs a value")
            i, value = i + 1, argv[i + 1]
        name = name.replace("-", "_")
        set_field(cfg, f"loop.{name}" if name in loop_fields else name, value)
        i += 1
    return cfg


def run_command(cfg, run, argv: list[str] | None, name: str, description: str) -> int:
    """A trainer's ``main``: parse ``--name value`` overrides onto ``cfg`` and ``run`` it, recording the command."""
    argv = sys.argv[1:] if argv is None else argv
    command = f"python -m dualtoken_lite {name}"
    run(parse_overrides(cfg, argv, f"{command} [--FIELD VALUE ...]\n\n{description}"),
        command=f"{command} " + " ".join(argv))
    return 0


def flat_config(cfg) -> dict:
    """{"loop.steps": 1500, "model.width": 128, "out": ...} of a nested config (or of its to_dict)."""
    out = {}
    for key, value in (cfg if isinstance(cfg, dict) else to_dict(cfg)).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "model", "samples")  # what a run writes


def clear_run(out: Path) -> None:
    """Remove what a unified run writes in ``out`` (only those files and folders, never anything else)."""
    clear_folder(out, RUN_FILES)


def plan_run(cfg) -> tuple[str, Path | None, dict | None]:
    """("new" | "resume" | "finished", checkpoint, finished summary) for ``cfg.out``; refuse to mix runs."""
    out = Path(cfg.out)
    point = resume_point(cfg.resume, out) if cfg.resume else None
    if cfg.resume is None and out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise UserError(f"--out {out} already holds a run; continue it with --resume auto, write to a new "
                            "--out, or replace it with --overwrite true")
        clear_run(out)
    if point is None:
        clear_run(out)  # --resume auto on a run that stopped before its first checkpoint: start it over
        return "new", None, None
    mine, theirs = flat_config(cfg), flat_config(json.loads((out / "config.json").read_text()))
    differ = {k: (theirs.get(k), v) for k, v in mine.items() if k not in RESUMABLE and theirs.get(k) != v}
    if differ:
        listed = "; ".join(f"--{k}: the run has {a!r}, the command line {b!r}" for k, (a, b) in differ.items())
        raise UserError(f"--resume continues the run in {out} with its own settings, and these differ: {listed}")
    summary_file = out / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if summary.get("step") == cfg.loop.steps:
            return "finished", point, summary
    return "resume", point, None


def open_run(cfg, headline: str) -> tuple[Path | None, dict | None]:
    """Validate a trainer config and plan its run: (checkpoint to continue or None, None), or (None, summary) when
    ``cfg.out`` already holds the finished run (its ``headline`` figures are printed). Sets torch's threads and seed."""
    cfg.validate()
    action, checkpoint, summary = plan_run(cfg)
    if action == "finished":
        print(f"{cfg.out} holds a finished run: {json.dumps(summary[headline])}", file=sys.stderr)
        return None, summary
    torch.set_num_threads(cfg.loop.threads)
    torch.manual_seed(cfg.loop.seed)
    return checkpoint, None


def ship(model: nn.Module, cfg, kind: str, minutes: float, command: str) -> tuple[nn.Module, dict]:
    """Save the trained model in float16 (``RUN/model``, with its tokenizer's fingerprint) and load it back, so what
    gets measured is what ships; returns it and the summary fields every unified run records."""
    tokenizer_id = fingerprint(cfg.tokenizer)
    save_model(model, Path(cfg.out) / "model", half=True, tokenizer=tokenizer_id)
    record = {"parameters": count_parameters(model), "train_minutes": round(minutes, 2), "tokenizer": tokenizer_id,
              "command": command, "threads": cfg.loop.threads,
              "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    return load_model(Path(cfg.out) / "model", kind=kind), record


class SavesWeights:
    """What training/checkpoints.save_checkpoint asks of a model: ``save_pretrained(folder)`` (float32 here)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def save_pretrained(self, folder) -> Path:
        return save_model(self.model, folder)


def fit(model: nn.Module, cfg, batch_loss: Callable[[torch.Tensor, torch.Generator], tuple], data_size: int,
        checkpoint: Path | None = None) -> int:
    """Train ``model`` for cfg.loop.steps steps (continuing ``checkpoint`` if given); return the final step."""
    loop, out = cfg.loop, Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    optimizer = torch.optim.AdamW(decay_groups(model, loop.weight_decay, no_decay=("pos", "embed")), lr=loop.lr,
                                  betas=(0.9, 0.95))
    schedule = build_schedule(optimizer, loop.warmup_steps, loop.steps, loop.min_lr_ratio)
    batches = torch.Generator().manual_seed(loop.seed)
    step = 0
    if checkpoint is not None:
        weights = read_weights(checkpoint / "model.safetensors")
        check_state_dict(model.state_dict(), weights, str(checkpoint))
        model.load_state_dict(weights, strict=True)
        state = load_training_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.set_state(state["batches"])
        restore_rng_state(state["rng"])
        step = state["step"]
        for group, base in zip(optimizer.param_groups, schedule.base_lrs):  # a longer --steps stretches the cosine:
            group["lr"] = base * warmup_cosine(step, loop.warmup_steps, loop.steps, loop.min_lr_ratio)  # its rate now
        truncate_metrics(out, step)
        print(f"resumed {out} at step {step}", file=sys.stderr)
    logger = MetricsLogger(out)
    model.train()
    bar = tqdm(total=loop.steps, initial=step, desc=f"train {out.name}", unit="step")
    t0, seen = time.perf_counter(), 0
    while step < loop.steps:
        idx = torch.randint(0, data_size, (loop.batch_size,), generator=batches)  # (B,) rows of the train cache
        with precision_context("cpu", loop.bf16):
            loss, logs = batch_loss(idx, batches)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step + 1}; the last checkpoint is intact (lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        lr = schedule.get_last_lr()[0]
        schedule.step()
        step, seen = step + 1, seen + loop.batch_size
        bar.update(1)
        if step % loop.log_every == 0 or step == loop.steps:
            flat = logger.log(step, {**logs, "lr": lr, "grad_norm": grad_norm,
                                     "images_per_s": seen / (time.perf_counter() - t0)})
            bar.set_postfix(loss=f"{flat['loss']:.3f}")
        if (loop.save_every and step % loop.save_every == 0) or step == loop.steps:
            state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "batches": batches.get_state(), "rng": capture_rng_state()}
            save_checkpoint(out / "checkpoints", step, SavesWeights(model), state, keep=loop.keep_checkpoints)
    bar.close()
    logger.close()
    model.eval()
    return step
