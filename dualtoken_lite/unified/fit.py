"""The unified model's training loop, built from the tokenizer trainer's parts (training/).

    with RunFolder(cfg, unified_rules(UnifiedTrainConfig, "train_unified"), given=given) as folder:
        step = fit(model, folder, batch_loss, data_size)   # cfg: a trainer config with .out/.resume/.overwrite/.loop

One step: draw ``batch_size`` row indices of the token cache from the run's own seeded generator, ``batch_loss``
-> AdamW (weight decay on matrices only, training/optim.decay_groups) with warmup + cosine
(training/optim.build_schedule) and gradient clipping. A run folder holds

    config.json  metrics.jsonl (training/logs.MetricsLogger)  checkpoints/step_*/ (training/checkpoints)
    model/ (the final weights, float16)  summary.json (what the trainer measured)

The folder keeps the tokenizer trainer's promises (training/run_folder.py: one owner, what a start may do with a
folder, a clean stop on SIGTERM / Ctrl-C, one line for a full disk, exit 3 naming the step of a NaN loss).
Checkpoints hold the model (safetensors), the optimizer, the schedule, the batch generator and every RNG (loaded with
weights_only=True), so ``--resume auto`` continues a stopped run where it stopped. ``parse_overrides`` turns
``--field value`` / ``--loop.steps 100`` / ``--model.width 96`` into the config (a bare ``--overwrite`` is true).
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

from dualtoken_lite.settings import (
    ConfigError,
    require_at_least,
    require_finite,
    to_dict,
)
from dualtoken_lite.training.arguments import flag_pairs, set_field
from dualtoken_lite.training.checkpoints import payload_bytes, restore_loop, save_loop
from dualtoken_lite.training.logs import MetricsLogger, truncate_metrics
from dualtoken_lite.training.optim import build_schedule, decay_groups, warmup_cosine
from dualtoken_lite.training.precision import precision_context, resolve_bf16
from dualtoken_lite.training.run_folder import NonFiniteError, RunFolder, RunRules
from dualtoken_lite.training.run_plan import saved_config_loader
from dualtoken_lite.unified.token_cache import fingerprint
from dualtoken_lite.unified.weights import count_parameters, load_model, save_model

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "model", "samples")  # what a run writes
# settings a resumed run may change; everything else must equal the run's saved config.json
RESUMABLE = ("loop.steps", "loop.log_every", "loop.save_every", "loop.keep_checkpoints", "loop.threads")


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
    seed: int = 0  # seeds the weights, the batch order and the prompt dropout
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


def parse_overrides(cfg, argv: list[str], usage: str) -> tuple[object, set[str]]:
    """Apply ``--name value`` pairs to a trainer config (loop fields may drop their ``loop.`` prefix; a bare boolean
    flag is true); return it and the dotted names of the fields set."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {usage}\n\nfields (--name value):\n" + "\n".join(f"  --{k} (default {v!r})"
                                                                 for k, v in flat_config(cfg).items()))
        sys.exit(0)
    loop_fields = {f.name for f in dataclasses.fields(LoopConfig)}
    given = set()
    for flag, value in flag_pairs(argv):
        name = flag[2:].replace("-", "_")
        dotted = f"loop.{name}" if name in loop_fields else name
        set_field(cfg, dotted, value)
        given.add(dotted)
    return cfg, given


def run_command(cfg, run, argv: list[str] | None, name: str, description: str) -> int:
    """A trainer's ``main``: parse ``--name value`` overrides onto ``cfg`` and ``run`` it, recording the command."""
    argv = sys.argv[1:] if argv is None else argv
    command = f"python -m dualtoken_lite {name}"
    cfg, given = parse_overrides(cfg, argv, f"{command} [--FIELD VALUE ...]\n\n{description}")
    run(cfg, command=f"{command} " + " ".join(argv), given=given)
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


def unified_rules(config_class: type, name: str) -> RunRules:
    """The run-folder rules of a unified trainer (``name``: its command, e.g. "train_unified")."""
    return RunRules(command=f"python -m dualtoken_lite {name}", files=RUN_FILES, resumable=RESUMABLE,
                    load_config=saved_config_loader(config_class), total_steps=lambda cfg: cfg.loop.steps)


def report_finished(folder: RunFolder, headline: str) -> dict:
    """A finished run's summary, its ``headline`` figures printed."""
    summary = folder.plan.summary
    print(f"{folder.path} holds a finished run: {json.dumps(summary[headline])}", file=sys.stderr)
    return summary


def start_torch(cfg) -> None:
    """torch's threads and seed for a unified run."""
    torch.set_num_threads(cfg.loop.threads)
    torch.manual_seed(cfg.loop.seed)


def ship(model: nn.Module, folder: RunFolder, kind: str, minutes: float, command: str) -> tuple[nn.Module, dict]:
    """Save the trained model in float16 (``RUN/model``, with its tokenizer's fingerprint) and load it back, so what
    gets measured is what ships; returns it and the summary fields every unified run records."""
    cfg = folder.cfg
    tokenizer_id = fingerprint(cfg.tokenizer)
    folder.save_model(lambda tmp: save_model(model, tmp, half=True, tokenizer=tokenizer_id),
                      payload_bytes(model.state_dict()) // 2)
    record = {"parameters": count_parameters(model), "train_minutes": round(minutes, 2), "tokenizer": tokenizer_id,
              "command": command, "threads": cfg.loop.threads,
              "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    return load_model(folder.path / "model", kind=kind), record


class SavesWeights:
    """What training/checkpoints.save_checkpoint asks of a model: ``save_pretrained(folder)`` (float32 here)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def save_pretrained(self, folder) -> Path:
        return save_model(self.model, folder)

    def state_dict(self) -> dict:
        return self.model.state_dict()


def fit(model: nn.Module, folder: RunFolder, batch_loss: Callable[[torch.Tensor, torch.Generator], tuple],
        data_size: int) -> int:
    """Train ``model`` for cfg.loop.steps steps in an owned run folder (continuing the checkpoint its plan names, if
    any); return the final step."""
    cfg = folder.cfg
    loop, out = cfg.loop, folder.path
    optimizer = torch.optim.AdamW(decay_groups(model, loop.weight_decay, no_decay=("pos", "embed")), lr=loop.lr,
                                  betas=(0.9, 0.95))
    schedule = build_schedule(optimizer, loop.warmup_steps, loop.steps, loop.min_lr_ratio)
    batches = torch.Generator().manual_seed(loop.seed)
    step = 0
    if folder.plan.checkpoint is not None:  # a longer --steps continues on the stretched cosine
        step = restore_loop(folder.plan.checkpoint, model, optimizer, schedule, batches,
                            lambda s: warmup_cosine(s, loop.warmup_steps, loop.steps, loop.min_lr_ratio))
    folder.begin()  # nothing was written before this point
    if step:
        truncate_metrics(out, step)
        print(f"resumed {out} at step {step}", file=sys.stderr)
    logger = MetricsLogger(out)
    bf16, note = resolve_bf16(loop.bf16, "cpu")
    if note:
        print(f"note: {note}", file=sys.stderr)
    model.train()
    bar = tqdm(total=loop.steps, initial=step, desc=f"train {out.name}", unit="step")
    with bar:  # closed before any error line, so that line stands alone
        t0, seen = time.perf_counter(), 0
        while step < loop.steps:
            idx = torch.randint(0, data_size, (loop.batch_size,), generator=batches)  # (B,) rows of the train cache
            with precision_context("cpu", bf16):
                loss, logs = batch_loss(idx, batches)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite loss at step {step + 1}")
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
            save_loop(folder, step, loop.steps, loop.save_every, loop.keep_checkpoints, SavesWeights(model), optimizer,
                      schedule, batches)
    logger.close()
    model.eval()
    return step
