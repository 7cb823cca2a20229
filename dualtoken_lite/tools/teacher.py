"""Train the tiny world's teacher into a run folder: ``python -m dualtoken_lite teacher`` (docs/method.md §9).

    OMP_NUM_THREADS=1 python -m dualtoken_lite teacher --threads 1 --out RUN   # the shipped recipe (21 min)
    python -m dualtoken_lite teacher --out RUN --resume auto                   # continue a stopped run
    cp RUN/model/teacher.* data/teacher/                                       # ship it, after reading its card

The teacher (the model and how it loads: ``tinyworld/teacher.py``) is the tiny preset's trunk plus a class head,
trained from scratch on the tiny world's procedural shapes. Why it learns in minutes where a plain run stalled near
chance: mostly the data (the shape is always the light figure on a darker ground, ``tinyworld.drawing.light_figure``);
then the recipe: a pool of drawn samples, each seen under a random flip/rotation by 90 degrees (the classes are
symmetric under them), batch 64, AdamW with a linear warmup and a cosine decay, label smoothing, gradient
clipping, and bfloat16 autocast on the CPU. Shipped result: 98.3 % held-out (raw-pixel linear probe: 31.5 %)
after 21 minutes on one CPU thread; the first command above remakes those weights in ``RUN/model``.

A run keeps every trainer's promises about its folder (training/run_folder.py: one owner, nothing written before the
run can start, SIGTERM / Ctrl-C write a checkpoint and print the command that continues, a resume continues
bit-identically, NaN stops the run with exit 3). ``--out`` (default ``runs/teacher``) holds

    config.json  metrics.jsonl  checkpoints/step_*/ (float32 weights, optimizer, schedule, batch order, RNGs)
    summary.json  model/ = teacher.safetensors (float16) + teacher.json (the card): a teacher folder, which the
                  tokenizer trainer takes as ``--teacher RUN/model``

A run never writes into the shipped ``data/teacher/``: ``--out`` or ``--resume`` there is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dualtoken_lite.model.pretrained import WEIGHTS_NAME
from dualtoken_lite.settings import ConfigError, require_at_least, require_finite, require_fraction
from dualtoken_lite.tinyworld.drawing import CLASSES, make_batch, to_tensor
from dualtoken_lite.tinyworld.paths import TEACHER_DIR, TINYWORLD_ROOT
from dualtoken_lite.tinyworld.shards import ensure_tinyworld, load_split
from dualtoken_lite.tinyworld.teacher import CARD_FILE, WEIGHTS_FILE, Teacher, accuracy, load_teacher
from dualtoken_lite.training.checkpoints import capture_rng_state, payload_bytes, restore_loop
from dualtoken_lite.training.logs import MetricsLogger, truncate_metrics
from dualtoken_lite.training.loop import check_finite_weights
from dualtoken_lite.training.optim import build_schedule, decay_groups, warmup_cosine
from dualtoken_lite.training.run_folder import NonFiniteError, RunFolder, RunRules
from dualtoken_lite.training.run_plan import CONTROL, saved_config_loader, target_folder


@dataclass
class TeacherConfig:
    """How the teacher is trained, and the run folder it is trained in."""

    steps: int = 2800  # optimizer steps
    batch_size: int = 64  # images per step (small batches learn more per image here)
    peak_lr: float = 1e-3  # AdamW learning rate at the end of the warmup
    warmup_steps: int = 150  # linear warmup from 0 to peak_lr
    final_lr_ratio: float = 0.02  # the cosine decays to peak_lr * final_lr_ratio
    weight_decay: float = 0.05  # AdamW decoupled weight decay on matrices (none on biases, norms, embeddings)
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    grad_clip: float = 1.0  # max global gradient norm
    pool_size: int = 49152  # training images generated up front (train split samples 0 .. pool_size-1)
    bf16: bool = True  # bfloat16 autocast for the forward pass (about 1.5x faster on AVX-512 CPUs)
    seed: int = 0  # seeds the weights and the batch order
    threads: int = 1  # torch CPU threads
    eval_every: int = 200  # steps between held-out accuracy checks on the eval shard (logged, never selected on)
    eval_count: int = 1024  # eval-shard images those checks read (the first eval_count; the shard holds 1,024)
    # the run folder (training/run_folder.py)
    out: str = "runs/teacher"  # run folder (never the shipped data/teacher/: copy RUN/model there by hand)
    resume: str | None = None  # "auto" (continue --out if it has a checkpoint) or a run / checkpoint folder
    overwrite: bool = False  # replace the run already in --out
    save_every: int = 200  # steps between checkpoints (0: only at the end, or when stopped by SIGTERM / Ctrl-C)
    keep_checkpoints: int = 2  # newest checkpoints kept


def validate_teacher_config(cfg: TeacherConfig) -> TeacherConfig:
    """Raise ConfigError naming the first bad field and its value; return ``cfg``."""
    require_finite(cfg)  # --peak-lr inf, --grad-clip nan, ...
    require_at_least(cfg, ("steps", "batch_size", "pool_size", "threads", "eval_every", "eval_count",
                           "keep_checkpoints"), 1)
    require_at_least(cfg, ("warmup_steps", "save_every"), 0)
    require_fraction(cfg, ("label_smoothing",))
    rules = {"peak_lr": (cfg.peak_lr > 0, "> 0"), "final_lr_ratio": (0 <= cfg.final_lr_ratio <= 1, "in [0, 1]"),
             "weight_decay": (cfg.weight_decay >= 0, ">= 0"), "grad_clip": (cfg.grad_clip > 0, "> 0")}
    for name, (ok, rule) in rules.items():
        if not ok:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be {rule}")
    return cfg


# What a teacher run writes, which settings a resume may change, how many steps a config asks for.
TEACHER_RUNS = RunRules(
    command="python -m dualtoken_lite teacher",
    files=("config.json", "metrics.jsonl", "summary.json", "checkpoints", "model"),
    resumable=("steps", "eval_every", "eval_count", "save_every", "keep_checkpoints", "threads"),
    load_config=saved_config_loader(TeacherConfig),
    total_steps=lambda cfg: cfg.steps,
)


def refuse_shipped_folder(cfg: TeacherConfig) -> None:
    """A run never writes into the shipped teacher's folder (nor below it): its card and weights stay as measured."""
    shipped = TEACHER_DIR.resolve()
    for flag, value in (("--out", cfg.out), ("--resume", cfg.resume)):
        if value is None or value == "auto":
            continue
        path = Path(value).resolve()
        if path == shipped or shipped in path.parents:
            raise ConfigError(f"{flag} {value} is the shipped teacher's folder, which a run never writes; train "
                              "into a run folder (--out runs/teacher) and copy RUN/model/teacher.* there after "
                              "reading its card")


def dihedral(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """A random one of the 8 flips/90-degree rotations per image (every shape class is symmetric under them)."""
    k = torch.randint(0, 8, (images.shape[0],), generator=rng)
    out = images.clone()
    for code in range(8):
        sel = k == code
        if sel.any():
            x = torch.rot90(images[sel], code % 4, dims=(2, 3))
            out[sel] = x.flip(3) if code >= 4 else x
    return out


def generate_pool(count: int, workers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split samples 0 .. count-1 as uint8 (B, h, w, 3) and labels (B,), generated in ``workers`` processes."""
    chunk = 2048
    starts = list(range(0, count, chunk))
    jobs = [(s, min(chunk, count - s), "train") for s in starts]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(make_batch, jobs)
    else:
        parts = [make_batch(*job) for job in jobs]
    return torch.from_numpy(np.concatenate([p[0] for p in parts])), torch.from_numpy(np.concatenate([p[1] for p in parts]))


class FullPrecision:
    """What a checkpoint asks of a model (training.checkpoints): ``save_pretrained`` and ``state_dict``. Checkpoints
    keep float32 weights (the shipped teacher is float16), so a resumed run goes on from exactly the weights it
    stopped with."""

    def __init__(self, model: nn.Module):
        self.model = model

    def save_pretrained(self, folder) -> None:
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                  str(Path(folder) / WEIGHTS_NAME))

    def state_dict(self) -> dict:
        return self.model.state_dict()


def restore(checkpoint: str, model: Teacher, optimizer: torch.optim.Optimizer, schedule, batches: torch.Generator,
            cfg: TeacherConfig) -> int:
    """Load a checkpoint (weights strictly, optimizer, schedule, batch order, every RNG); return its step. A longer
    ``steps`` stretches the cosine: the rate becomes the new schedule's at this step."""
    return restore_loop(checkpoint, model, optimizer, schedule, batches,
                        lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio))


def train_teacher(cfg: TeacherConfig, eval_images: np.ndarray, eval_labels: np.ndarray, log=print,
                  folder: RunFolder | None = None) -> Teacher:
    """Train a Teacher from scratch with ``cfg``; log loss, learning rate and held-out accuracy as it goes.

    ``folder``: an owned run folder (training.run_folder) to continue from (its plan's checkpoint), to begin writing
    in once the pool is drawn, and to keep checkpoints, metrics.jsonl and a clean stop in; None trains in memory.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = Teacher()
    # weight decay on matrices only: biases, norms, position embeddings and the MAP probe are left alone
    groups = decay_groups(model, cfg.weight_decay, no_decay=("pos_embed", "latent"))
    optimizer = torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=cfg.betas)
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio)
    start = time.time()
    pool_x, pool_y = generate_pool(cfg.pool_size, workers=cfg.threads)
    log(f"generated {cfg.pool_size} training images in {time.time() - start:.0f} s")
    g = torch.Generator().manual_seed(cfg.seed)  # the batch order and the flips
    step, logger = 0, None
    if folder is not None:
        if folder.plan.checkpoint is not None:
            step = restore(folder.plan.checkpoint, model, optimizer, schedule, g, cfg)
        folder.begin()  # nothing was written before this point
        if step:
            truncate_metrics(folder.path, step)
            print(f"resumed {folder.path} at step {step}", file=sys.stderr)
        logger = MetricsLogger(folder.path)
    model.train()
    while step < cfg.steps:
        idx = torch.randint(0, cfg.pool_size, (cfg.batch_size,), generator=g)
        x = dihedral(to_tensor(pool_x[idx].numpy()), g)  # (B, 3, h, w)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits.float(), pool_y[idx], label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite loss at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        step += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = accuracy(model, eval_images, eval_labels)
            log(f"step {step}/{cfg.steps}  loss {loss.item():.3f}  lr {lr:.2e}  "
                f"eval acc {acc:.3f}  {time.time() - start:.0f} s")
            if logger is not None:
                logger.log(step, {"loss": loss, "lr": lr, "eval_accuracy": acc})
        if folder is not None:
            checkpoint_or_stop(folder, step, model, optimizer, schedule, g)
    return model.eval()


def checkpoint_or_stop(folder: RunFolder, step: int, model: Teacher, optimizer, schedule,
                       batches: torch.Generator) -> None:
    """After each step: a checkpoint when one is due (every save_every steps, the last step) or a stop was asked for
    (SIGTERM / Ctrl-C); then, if asked, stop with the line that continues the run (exit 4)."""
    cfg = folder.cfg
    stop = folder.stop_signal()
    if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stop:
        check_finite_weights(model, step)  # a checkpoint is only ever written from finite weights
        state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "batches": batches.get_state(), "rng": capture_rng_state()}
        folder.save_checkpoint(step, FullPrecision(model), state, keep=cfg.keep_checkpoints)
    if stop:
        folder.stop(step, stop)


def save_teacher(model: Teacher, card: dict, folder: str | os.PathLike) -> None:
    """Write ``teacher.safetensors`` (trunk.* and head.* tensors, stored as float16 to halve the file) and
    ``teacher.json`` (configs, figures). Measure figures on the reloaded weights: they are what ships."""
    os.makedirs(folder, exist_ok=True)
    weights = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(folder, CARD_FILE), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def machine() -> str:
    """This machine in a few words, for the card: cores, CPU model, torch version."""
    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{os.cpu_count()}-core {model}, torch {torch.__version__}"


def run(cfg: TeacherConfig, given: set[str] | None = None, data: str | os.PathLike = TINYWORLD_ROOT,
        command: str = "") -> dict:
    """Train (or continue, or report) a teacher run; return its summary. ``given``: the fields the command line set,
    which a resume compares with the run's saved config (None: all of them); ``data``: the tiny world's shards."""
    validate_teacher_config(cfg)
    refuse_shipped_folder(cfg)
    with RunFolder(cfg, TEACHER_RUNS, given=given) as folder:
        if folder.plan.action == "finished":
            print(f"{folder.path} holds a finished teacher run: nothing to train. Its summary is "
                  f"{folder.path / 'summary.json'}; --steps N continues it, --overwrite starts over.", file=sys.stderr)
            return {**folder.plan.summary, "already_finished": True}
        cfg, resumed = folder.cfg, folder.plan.checkpoint
        eval_images, eval_labels = load_split(ensure_tinyworld(data, splits=("eval",))["eval"])
        start = time.time()
        model = train_teacher(cfg, eval_images[: cfg.eval_count], eval_labels[: cfg.eval_count],
                              log=lambda line: print(line, flush=True), folder=folder)
        card = {
            "classes": list(CLASSES),
            "backbone": asdict(model.backbone),
            "recipe": {k: v for k, v in asdict(cfg).items() if k not in CONTROL},
            "weights_dtype": "float16 (loaded as float32)",
            "train_minutes": round((time.time() - start) / 60, 1),
            "command": f"OMP_NUM_THREADS={cfg.threads} {command}",
            "resumed_from": resumed,
            "machine": machine(),
        }
        needed = payload_bytes(model.state_dict()) // 2
        folder.save_model(lambda tmp: save_teacher(model, card, tmp), needed)
        card.update(measure_teacher(folder.path / "model", eval_images, eval_labels))  # on the float16 weights
        folder.save_model(lambda tmp: save_teacher(model, card, tmp), needed)
        summary = {"step": cfg.steps, **{k: v for k, v in card.items()
                                         if k not in ("classes", "backbone", "recipe", "weights_dtype")}}
        folder.write_summary(summary)
    return summary


def parse_command_line(argv: list[str]) -> tuple[TeacherConfig, set[str], str]:
    """``--field value`` flags onto TeacherConfig (a bare boolean flag is true); the config, the fields given, and
    ``--data``."""
    def truth(text: str) -> bool:
        if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: give true or false")
        return text.lower() in ("1", "true", "yes")

    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite teacher", description=__doc__.split("\n")[0],
                                     argument_default=argparse.SUPPRESS)
    defaults = TeacherConfig()
    for f in fields(TeacherConfig):
        value, flag = getattr(defaults, f.name), f"--{f.name.replace('_', '-')}"
        if isinstance(value, tuple):
            continue  # betas: fixed by the recipe
        if isinstance(value, bool):
            parser.add_argument(flag, type=truth, nargs="?", const=True, help=f"(default {value})")
        else:
            kind = int if isinstance(value, int) else float if isinstance(value, float) else str
            parser.add_argument(flag, type=kind, help=f"(default {value!r})")
    parser.add_argument("--data", default=str(TINYWORLD_ROOT), help="folder of the tiny world's shards")
    args = vars(parser.parse_args(argv))
    data = args.pop("data")
    return TeacherConfig(**args), set(args), data


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, given, data = parse_command_line(argv)
    summary = run(cfg, given, data, command=" ".join(["python -m dualtoken_lite teacher", *argv]))
    if not summary.get("already_finished"):
        print(json.dumps(summary, indent=2))
        print(f"wrote {target_folder(cfg, given)}/ (model/: the teacher folder, checkpoints/, metrics.jsonl, "
              "summary.json)")
    return 0


def measure_teacher(folder: str | os.PathLike, eval_images: np.ndarray, eval_labels: np.ndarray) -> dict:
    """The figures the card states, measured on the shipped weights: held-out accuracy and the pixel probe."""
    torch.set_num_threads(1)
    model = nn.Sequential(*load_teacher(folder))
    big_images, big_labels = make_batch(0, 8192, "eval")
    return {
        "eval_shard_accuracy": accuracy(model, eval_images, eval_labels),
        "eval_shard_count": len(eval_labels),
        "eval_8192_accuracy": accuracy(model, big_images, big_labels),
        "pixel_probe": pixel_probe_accuracy(2048, eval_images, eval_labels),
    }


def pixel_probe_accuracy(train_count: int = 2048, eval_images: np.ndarray | None = None,
                         eval_labels: np.ndarray | None = None) -> dict:
    """A raw-pixel linear probe: ridge regression to one-hot labels on train samples, top-1 on eval images.

    The ridge strength is picked on 1,024 further train samples; the (N x N) dual system is solved in float64.
    """
    images, labels = make_batch(0, train_count + 1024, "train")
    x = to_tensor(images).flatten(1)  # (N, 3 h w) raw pixels in [-1, 1]
    mean = x[:train_count].mean(0)
    x = x - mean
    xt, xv = x[:train_count], x[train_count:]
    y = F.one_hot(torch.from_numpy(labels[:train_count]), len(CLASSES)).double()
    gram = (xt @ xt.T).double()  # (N, N)
    scale = gram.diagonal().mean().item()
    best = None
    for lam in (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0):
        alpha = torch.linalg.solve(gram + lam * scale * torch.eye(train_count, dtype=gram.dtype), y)
        weights = xt.T @ alpha.float()  # (3 h w, classes)
        acc = float(((xv @ weights).argmax(1).numpy() == labels[train_count:]).mean())
        if best is None or acc > best[1]:
            best = (lam, acc, weights)
    lam, val_acc, weights = best
    result = {"train_count": train_count, "ridge": lam, "val_accuracy": val_acc}
    if eval_images is not None:
        xe = to_tensor(eval_images).flatten(1) - mean
        result["eval_accuracy"] = float(((xe @ weights).argmax(1).numpy() == eval_labels).mean())
    return result


if __name__ == "__main__":
    from dualtoken_lite.settings import run_cli

    sys.exit(run_cli(main))
