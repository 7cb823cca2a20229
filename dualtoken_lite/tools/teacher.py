"""Train the tiny world's teacher, a tiny SigLIP, on captioned images: ``python -m dualtoken_lite teacher --out RUN``.

    python -m dualtoken_lite teacher --out runs/teacher                  # the shipped recipe (the card says how long)
    python -m dualtoken_lite teacher --out runs/teacher --resume auto    # continue a stopped run where it stopped

The model and how it loads: ``tinyworld/teacher.py``; the captions: ``tinyworld/captions.py``; a step's batch:
``tinyworld/caption_batches.py``; the loss: ``losses/siglip.py``. The recipe, step by step:

    images   a pool of ``pool_size`` drawn training samples (train split 0 .. pool_size - 1), each step a random
             batch of them, each image under a random flip / quarter turn (``dihedral``; ``augment="none"`` off)
    texts    one of each image's captions, at random; its position words turned with the image
             (``captions.turn_values``), so the caption stays true of what the model sees
    prompts  the 23 one-attribute prompts ("a star", "a picture of a red shape", ...), one per value of each
             attribute in a random wording, join every step's texts (``prompts``)
    loss     the sigmoid loss with learnable t' and b (SigLIP's init log 10, -10). Partial captions make in-batch
             false negatives ("a star" fits every star of the batch, not only its own image); ``positives``
             says what a caption true of another image is to that image: left out of the loss ("ignore", the
             recipe), a positive ("attributes"), or a negative ("diagonal": SigLIP's identity labels). The
             prompts are decided by the keys alone: a positive for every image they are true of, a negative
             for the rest. Without them zero-shot shape stalled near 64 %; with them it follows the supervised pace
    optim    AdamW, linear warmup then cosine, gradient clipping, bfloat16 autocast on the CPU

A run folder keeps every trainer's promises (training/run_folder.py: one owner, nothing written before the run can
start, SIGTERM / Ctrl-C write a checkpoint and print the command that continues, a resume continues bit-identically):

    config.json  metrics.jsonl  checkpoints/step_*/  summary.json
    model/       teacher.safetensors + teacher.json (the card): a teacher folder, ``--teacher RUN/model``

``--out`` is never the shipped ``data/teacher/``: copy a run's ``model/`` there after reading its card. The card
holds the command, wall time, threads, load average and the figures of ``measure_teacher``, measured on the saved
float16 weights with images 0-511 of the eval shard. Held-out accuracies logged during training use eval images
512-1023 (the half recipes are chosen on).
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
from safetensors.torch import save_file
from torch import nn

from dualtoken_lite.evaluation.probes import measure_teacher
from dualtoken_lite.evaluation.zero_shot import attribute_accuracy, attribute_heads, attribute_labels
from dualtoken_lite.losses.siglip import SigmoidLoss
from dualtoken_lite.model.pretrained import WEIGHTS_NAME
from dualtoken_lite.settings import ConfigError, require_at_least, require_finite
from dualtoken_lite.tinyworld.caption_batches import CaptionedPool, draw_pool
from dualtoken_lite.tinyworld.captions import CAPTIONS_PER_IMAGE
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.paths import TEACHER_DIR
from dualtoken_lite.tinyworld.teacher import TextConfig, TinySigLIP, read_card, save_teacher
from dualtoken_lite.training.checkpoints import payload_bytes, restore_loop, save_loop
from dualtoken_lite.training.logs import MetricsLogger, truncate_metrics
from dualtoken_lite.training.optim import build_schedule, decay_groups, warmup_cosine
from dualtoken_lite.training.precision import resolve_bf16
from dualtoken_lite.training.run_folder import NonFiniteError, RunFolder, RunRules
from dualtoken_lite.training.run_plan import CONTROL, saved_config_loader, target_folder

AUGMENTS = ("dihedral", "none")
POSITIVES = ("attributes", "ignore", "diagonal")


@dataclass
class TeacherConfig:
    """How the teacher is trained."""

    steps: int = 6400  # optimizer steps
    batch_size: int = 64  # images per step
    captions_per_image: int = 1  # captions of each image in a step (distinct ones, of its CAPTIONS_PER_IMAGE)
    hard_negatives: int = 1  # per caption, this many copies with one named attribute changed, each a different
    #                          attribute (as many as it names at most): false of its image
    full_caption: bool = True  # each image's captions of a step include its first one, which names everything
    prompts: bool = True  # add to each step's texts one caption per value of each attribute, naming it alone: a
    #                        positive for every image it is true of, a negative for the rest, whatever `positives` says
    peak_lr: float = 1e-3  # AdamW learning rate at the end of the warmup
    warmup_steps: int = 150  # linear warmup from 0 to peak_lr
    final_lr_ratio: float = 0.02  # the cosine decays to peak_lr * final_lr_ratio
    weight_decay: float = 0.05  # AdamW decoupled weight decay on matrices (none on biases, norms, embeddings)
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    grad_clip: float = 1.0  # max global gradient norm
    text_lr: float = 1.0  # the text tower learns at this multiple of the learning rate
    scale_bias_lr: float = 30.0  # t' and b learn at this multiple of the learning rate: from SigLIP's init (t = 10,
    #                              b = -10) they would move about 1e-3 a step, far too slow for a few thousand steps
    pool_size: int = 49152  # training images drawn up front (train split samples 0 .. pool_size - 1)
    augment: str = "dihedral"  # "dihedral": a random flip / quarter turn per image, position words turned along
    positives: str = "ignore"  # a caption true of another image of the batch is, to that image: a positive
    #                                ("attributes"), left out of the loss ("ignore"), or a negative ("diagonal": SigLIP's)
    text_layers: int = 2  # blocks of the text transformer (its width is the image tower's)
    text_pool: str = "mean"  # the caption embedding: the text tower's output at <end>, or its mean over the words
    token_init: float = 0.02  # std of the text tower's word embeddings at init
    bf16: bool = True  # bfloat16 autocast for the forward pass (about 1.5x faster on AVX-512 CPUs; fp32 on a CPU
    #                   without bf16 kernels, training/precision.py)
    seed: int = 0  # seeds the weights and the batch order
    threads: int = 1  # torch CPU threads
    eval_every: int = 200  # steps between held-out zero-shot checks on eval images 512-1023 (logged only)
    eval_count: int = 512  # eval images those checks read: 512 .. 512 + eval_count - 1
    # the run folder
    out: str = "runs/teacher"  # run folder (never the shipped data/teacher/: copy RUN/model there by hand)
    resume: str | None = None  # "auto" (continue --out if it has a checkpoint) or a run / checkpoint folder
    overwrite: bool = False  # replace the run already in --out
    save_every: int = 200  # steps between checkpoints (0 = only at the end, or when stopped by SIGTERM / Ctrl-C)
    keep_checkpoints: int = 2  # newest checkpoints kept


def validate_teacher_config(cfg: TeacherConfig) -> TeacherConfig:
    """Refuse a config that cannot train, naming the value and the fix."""
    if cfg.augment not in AUGMENTS:
        raise ConfigError(f"augment={cfg.augment!r}: choose one of {AUGMENTS}")
    if cfg.positives not in POSITIVES:
        raise ConfigError(f"positives={cfg.positives!r}: choose one of {POSITIVES}")
    if cfg.prompts and cfg.positives == "diagonal":
        raise ConfigError("prompts=True needs attribute keys to say which images a prompt is true of; with "
                          "positives='diagonal' there are none: choose positives='ignore' or 'attributes'")
    require_finite(cfg)  # --peak-lr inf, --grad-clip nan, ...
    require_at_least(cfg, ("steps", "batch_size", "pool_size", "threads", "text_layers", "eval_every",
                           "captions_per_image", "eval_count", "keep_checkpoints"), 1)
    require_at_least(cfg, ("warmup_steps", "save_every", "hard_negatives"), 0)
    if cfg.captions_per_image > CAPTIONS_PER_IMAGE:
        raise ConfigError(f"captions_per_image={cfg.captions_per_image}: an image has {CAPTIONS_PER_IMAGE} captions")
    if cfg.batch_size > cfg.pool_size:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds pool_size={cfg.pool_size}; draw a larger pool")
    return cfg


def held_out_check(model: TinySigLIP, images: np.ndarray, labels: dict) -> dict[str, float]:
    """Zero-shot accuracy per attribute on held-out images (fp32, eval mode), for the training log."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        heads = attribute_heads(model)
        pooled = torch.cat([model.encode_image(to_tensor(images[i : i + 256])) for i in range(0, len(images), 256)])
    model.train(was_training)
    return attribute_accuracy(pooled, labels, heads)


# What a teacher run writes, which settings a resume may change, how many steps a config asks for.
TEACHER_RUNS = RunRules(
    command="python -m dualtoken_lite teacher",
    files=("config.json", "metrics.jsonl", "summary.json", "checkpoints", "model"),
    resumable=("steps", "eval_every", "eval_count", "save_every", "keep_checkpoints", "threads"),
    load_config=saved_config_loader(TeacherConfig),
    total_steps=lambda cfg: cfg.steps,
)


class FullPrecision:
    """What a checkpoint asks of a model (training.checkpoints): ``save_pretrained`` and ``state_dict``. Checkpoints
    keep float32 weights, so a resumed run goes on from exactly the weights it stopped with."""

    def __init__(self, model: nn.Module):
        self.model = model

    def save_pretrained(self, folder) -> None:
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                  str(Path(folder) / WEIGHTS_NAME))

    def state_dict(self) -> dict:
        return self.model.state_dict()


def train_teacher(cfg: TeacherConfig, pool: CaptionedPool, check_images: np.ndarray, check_labels: dict,
                  log=print, folder: RunFolder | None = None) -> TinySigLIP:
    """Train a TinySigLIP from scratch with ``cfg`` on ``pool``; log loss, t, b and held-out zero-shot accuracy.

    ``folder``: an owned run folder (training.run_folder) to continue from (its plan's checkpoint), to begin writing
    in once everything is built, and to keep checkpoints, metrics.jsonl and a clean stop in; None trains in memory.
    """
    validate_teacher_config(cfg)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = TinySigLIP(text=TextConfig(layers=cfg.text_layers, pool=cfg.text_pool, token_init=cfg.token_init))
    # weight decay on matrices only: biases, norms, position embeddings, the MAP probe, t' and b are left alone
    no_decay = ("pos_embed", "latent", "positional_embedding")
    groups = decay_groups(model.trunk, cfg.weight_decay, no_decay)
    for group in decay_groups(model.text, cfg.weight_decay, no_decay):
        groups.append({**group, "lr_scale": cfg.text_lr})
    groups.append({"params": [model.logit_scale, model.logit_bias], "weight_decay": 0.0, "lr_scale": cfg.scale_bias_lr})
    for group in groups:
        group["lr"] = cfg.peak_lr * group.get("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=cfg.betas)
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio)
    loss_fn = SigmoidLoss(matches="ignore" if cfg.positives == "ignore" else "positive")
    g = torch.Generator().manual_seed(cfg.seed)
    step, logger = 0, None
    if folder is not None:
        if folder.plan.checkpoint is not None:
            step = restore_loop(folder.plan.checkpoint, model, optimizer, schedule, g,
                                lambda at: warmup_cosine(at, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio))
        folder.begin()  # nothing was written before this point
        if step:
            truncate_metrics(folder.path, step)
            log(f"resumed {folder.path} at step {step}")
        logger = MetricsLogger(folder.path)
    bf16, note = resolve_bf16(cfg.bf16, "cpu")
    if note:
        log(f"note: {note}")
    start = time.time()
    model.train()
    while step < cfg.steps:
        idx = torch.randint(0, len(pool), (cfg.batch_size,), generator=g)
        batch = pool.batch(idx, g, cfg.augment == "dihedral", cfg.captions_per_image, cfg.hard_negatives,
                           cfg.full_caption, prompts=cfg.prompts)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x, y, scale, bias = model(batch["images"], batch["tokens"])  # (B, C), (B, C), t, b
        keys = (batch["image_keys"], batch["text_keys"]) if cfg.positives != "diagonal" else (None, None)
        keyed = batch["keyed"] if keys[0] is not None else None  # prompts: + where true of the image, - where false
        loss = loss_fn(x.float(), y.float(), scale, bias, *keys, owners=batch["owners"], keyed=keyed)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite loss at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        lr = schedule.get_last_lr()[0]
        schedule.step()
        step += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = held_out_check(model, check_images, check_labels)
            log(f"step {step}/{cfg.steps}  loss {loss.item():.3f}  t {scale.item():.1f}  b {bias.item():.2f}  "
                f"lr {lr:.2e}  zero-shot (eval 512-{511 + len(check_images)}) "
                + " ".join(f"{a} {v:.3f}" for a, v in acc.items()) + f"  {time.time() - start:.0f} s")
            if logger is not None:
                logger.log(step, {"loss": loss, "t": scale, "b": bias, "lr": lr, "zero_shot": acc})
        if folder is not None:
            save_loop(folder, step, cfg.steps, cfg.save_every, cfg.keep_checkpoints, FullPrecision(model), optimizer,
                      schedule, g)
    return model.eval()


def machine() -> str:
    """The machine a card was measured on, in words."""
    return f"{os.cpu_count()}-core {platform.processor() or platform.machine()} CPU, torch {torch.__version__}"


def refuse_shipped_folder(folder: Path) -> None:
    """A run never writes into the shipped teacher's folder (nor below it): its card and weights stay as measured."""
    shipped, target = Path(TEACHER_DIR).resolve(), folder.resolve()
    if target == shipped or shipped in target.parents:
        raise ConfigError(f"--out {folder} is the shipped teacher's folder; train into a run folder (--out "
                          "runs/teacher) and copy its model/ there after reading its card")


def run(cfg: TeacherConfig, given: set[str] | None = None, pool_cache: str | None = None, command: str = "") -> dict:
    """Train (or continue, or report) a teacher run; return its summary. ``given``: the fields the command line set,
    which a resume compares with the run's saved config (None: all of them)."""
    validate_teacher_config(cfg)
    refuse_shipped_folder(target_folder(cfg, given))
    load_before = os.getloadavg()
    with RunFolder(cfg, TEACHER_RUNS, given=given) as folder:
        if folder.plan.action == "finished":
            print(f"{folder.path} holds a finished teacher run: nothing to train. Its summary is "
                  f"{folder.path / 'summary.json'}; --steps N continues it, --overwrite starts over.", file=sys.stderr)
            return {**folder.plan.summary, "already_finished": True}
        cfg, resumed = folder.cfg, folder.plan.checkpoint
        start = time.time()
        pool = CaptionedPool(*load_pool(cfg.pool_size, cfg.threads, pool_cache))
        print(f"drew {len(pool)} training images in {time.time() - start:.0f} s", flush=True)
        check_images, check_metas = make_samples(512, cfg.eval_count, "eval")  # eval images 512..: the selection half
        model = train_teacher(cfg, pool, check_images, attribute_labels(check_metas),
                              log=lambda line: print(line, flush=True), folder=folder)
        card = {"command": command, "recipe": {k: v for k, v in asdict(cfg).items() if k not in CONTROL},
                "train_minutes": round((time.time() - start) / 60, 1), "resumed_from": resumed,
                "threads": cfg.threads, "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in os.getloadavg()], "machine": machine(),
                "weights_dtype": "float16 (loaded as float32)"}
        needed = payload_bytes(model.state_dict()) // 2
        folder.save_model(lambda tmp: save_teacher(model, card, tmp), needed)
        card["figures"] = measure_teacher(folder.path / "model")  # measured on the saved float16 weights
        folder.save_model(lambda tmp: save_teacher(model, card, tmp), needed)
        summary = {"step": cfg.steps, "fingerprint": read_card(folder.path / "model")["fingerprint"],
                   "train_minutes": card["train_minutes"], "figures": card["figures"]}
        folder.write_summary(summary)
    print(json.dumps(summary["figures"], indent=2))
    return summary


def parse_command_line(argv: list[str]) -> tuple[TeacherConfig, set[str], str | None]:
    """``--field value`` flags onto TeacherConfig (a bare boolean flag is true); the config, the fields given, and
    ``--pool-cache``."""
    def truth(text: str) -> bool:
        if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: give true or false")
        return text.lower() in ("1", "true", "yes")

    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite teacher", description=__doc__.split("\n")[0],
                                     argument_default=argparse.SUPPRESS)
    for f in fields(TeacherConfig):
        value, flag = getattr(TeacherConfig(), f.name), f"--{f.name.replace('_', '-')}"
        if isinstance(value, tuple):
            continue  # betas: fixed by the recipe
        if isinstance(value, bool):
            parser.add_argument(flag, type=truth, nargs="?", const=True, help=f"(default {value})")
        else:
            parser.add_argument(flag, type=int if isinstance(value, int) else float if isinstance(value, float)
                                else str, help=f"(default {value!r})")
    parser.add_argument("--pool-cache", default=None, help="a .npz file keeping the drawn pool between runs")
    args = vars(parser.parse_args(argv))
    pool_cache = args.pop("pool_cache")
    return TeacherConfig(**args), set(args), pool_cache


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, given, pool_cache = parse_command_line(argv)
    summary = run(cfg, given, pool_cache, command="python -m dualtoken_lite teacher " + " ".join(argv))
    if not summary.get("already_finished"):
        print(f"wrote {target_folder(cfg, given)}/ (model/: the teacher folder, checkpoints/, metrics.jsonl, "
              "summary.json)")
    return 0


def load_pool(count: int, workers: int, cache: str | None) -> tuple[np.ndarray, list[dict]]:
    """The drawn pool, from ``cache`` when it holds this many samples, else drawn (and written to ``cache``)."""
    if cache and os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as data:
            if len(data["images"]) == count:
                return data["images"], json.loads(str(data["metas"]))
    images, metas = draw_pool(count, "train", workers)
    if cache:
        np.savez(cache, images=images, metas=json.dumps(metas))
    return images, metas


if __name__ == "__main__":
    from dualtoken_lite.settings import run_cli

    sys.exit(run_cli(main))
