"""The pieces of one training run, assembled: model, teacher, data, optimizers, discriminator, and their state.

`train.py` holds the loop; this module builds what the loop needs (`build_trainer`) and does each kind of step:
a generator micro-step (forward, every loss term, backward), the optimizer step, the discriminator step, an
evaluation, and the training state that a checkpoint saves and a resume puts back.
"""

from __future__ import annotations

import copy
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .checkpoint import check_state_dict
from .data import build_loader
from .discriminator import build_discriminator
from .evaluation import evaluate_tokenizer
from .gan_schedule import GanSchedule
from .losses import (
    LossConfig,
    discriminator_loss,
    generator_loss,
    loss_preset,
    targets_from_teacher,
    term_status,
)
from .metrics import psnr
from .model import DualToken
from .optim import build_adamw, build_schedule, warmup_cosine
from .perceptual import Perceptual
from .stages import apply_stage, get_stage, stage_train_mode
from .train_config import TrainConfig
from .training_state import capture_rng_state, load_training_state, restore_rng_state

TINYWORLD_ROOT = Path(__file__).resolve().parents[1] / "data" / "tinyworld"


def seed_everything(seed: int) -> None:
    """The same seed on every rank: identical initial weights everywhere (data differs by rank, not by seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_source(source: str, world) -> str | list[str]:
    """'tinyworld' / 'tinyworld-eval' -> the bundled shards (rank 0 makes them on first use); else as given."""
    if source not in ("tinyworld", "tinyworld-eval"):
        return source
    from .tinyworld import ensure_tinyworld

    split = "eval" if source.endswith("eval") else "train"
    if world.is_main:
        ensure_tinyworld(str(TINYWORLD_ROOT), splits=(split,))
    dist_utils.barrier()
    return ensure_tinyworld(str(TINYWORLD_ROOT), splits=(split,))[split]


def load_teacher_tower(cfg: TrainConfig, model: DualToken) -> tuple[nn.Module, nn.Module | None]:
    """The frozen teacher (a trunk) and, for the tiny world, its class head (the zero-shot stand-in).

    "shipped": the tiny world's trained teacher, which is also the starting point of the tokenizer's tower;
    "backbone": a frozen copy of the tower as built (the pretrained SigLIP at paper scale);
    a folder: a teacher saved by `python -m dualtoken_lite.teacher --out FOLDER`.
    """
    if cfg.teacher == "shipped" or (cfg.teacher and Path(cfg.teacher).is_dir()):
        from .teacher import load_teacher

        trunk, head = load_teacher(None if cfg.teacher == "shipped" else cfg.teacher)
        model.encoder.trunk.load_state_dict(trunk.state_dict(), strict=True)
        return trunk, head
    if cfg.teacher == "backbone":
        teacher = copy.deepcopy(model.encoder.trunk).eval().requires_grad_(False)
        return teacher, None
    raise ValueError(f"teacher={cfg.teacher!r}: use 'shipped' (tiny world), 'backbone' or a teacher folder")


@dataclass
class Trainer:
    """Everything a run holds between steps; `state_dict()` is what a checkpoint saves besides the model."""

    cfg: TrainConfig
    world: dist_utils.World
    model: DualToken
    loss_cfg: LossConfig
    teacher: nn.Module
    head: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: object
    steps_per_epoch: int
    total_steps: int
    gan: GanSchedule | None
    perceptual: nn.Module | None = None
    disc: nn.Module | None = None
    disc_opt: torch.optim.Optimizer | None = None
    disc_sched: torch.optim.lr_scheduler.LRScheduler | None = None
    disc_born: int = 0  # step at which the current discriminator was (re)created
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current data epoch
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    find_unused: bool = False
    autocast: bool = False
    pending: list = field(default_factory=list)  # (images, detached reconstructions) of this step, for D

    # ------------------------------------------------------------------------------------------ data
    def batches(self):
        """Micro-batches forever, epoch after epoch, starting at the saved data position."""
        while True:
            self.loader.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def skipped_samples(self) -> int:
        """Bad samples skipped so far, summed over ranks."""
        return int(dist_utils.all_reduce_sum(torch.tensor(float(self.loader.skips.total))).item())

    # ------------------------------------------------------------------------------------ generator
    def gan_weight(self, step: int) -> float:
        return self.gan.gan_weight(step) if self.gan is not None and self.disc is not None else 0.0

    def gan_on(self, step: int) -> bool:
        return self.gan_weight(step) > 0 and "gan" in get_stage(self.cfg.stage).terms

    def generator_micro_step(self, model: nn.Module, batch: dict, scale: float):
        """Forward one micro-batch, compute every loss term, backpropagate ``scale * total``."""
        x = batch["image"].to(self.world.device, non_blocking=True)  # (B, 3, h, w) in [-1, 1]
        ctx = torch.autocast(self.world.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()
        with ctx:
            out = model(x)
            targets = None
            if self.model.cfg.semantic_layer is not None and self.loss_cfg.sem_weight > 0:
                targets = targets_from_teacher(self.teacher, x, self.model.cfg.semantic_layer)
            total, terms = generator_loss(
                out, x, self.loss_cfg, teacher=targets, perceptual=self.perceptual,
                discriminator=self.disc if self.gan_on(self.step) else None,
                last_layer=self.model.decoder.conv_out.weight, stage=self.cfg.stage,
                gan_weight=self.gan_weight(self.step) if self.gan_on(self.step) else 0.0,
            )
        (total * scale).backward()
        if self.gan_on(self.step):
            self.pending.append((x, out.reconstruction.detach()))
        terms["psnr"] = psnr(out.reconstruction.detach(), x).mean()
        return terms, out

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -------------------------------------------------------------------------------- discriminator
    def maybe_new_discriminator(self) -> None:
        """Create D when the schedule switches it on, and re-create it (with its optimizer) on restarts."""
        if self.gan is None or "gan" not in get_stage(self.cfg.stage).terms:
            return
        if self.disc is None and self.gan.gan_active(self.step) or self.gan.should_restart(self.step):
            self.disc = build_discriminator(self.loss_cfg.disc_channels, self.loss_cfg.disc_layers,
                                            device=self.world.device)
            if self.world.distributed:
                self.disc = nn.parallel.DistributedDataParallel(self.disc)
            c = self.loss_cfg
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=c.disc_lr, betas=c.disc_betas,
                                             weight_decay=c.disc_weight_decay)
            warm = int(c.disc_warmup_epochs * self.steps_per_epoch)
            left = max(1, self.total_steps - self.step)
            floor = c.disc_min_lr / c.disc_lr
            self.disc_sched = torch.optim.lr_scheduler.LambdaLR(
                self.disc_opt, lambda s: warmup_cosine(s, max(1, warm), left, min(1.0, floor)))
            self.disc_born = self.step

    def discriminator_step(self, micro: list) -> dict:
        """One D update on this step's real images and detached reconstructions (summed over micro-batches)."""
        pending, self.pending = self.pending, []
        if not pending:
            return {}
        weight = self.gan.disc_loss_weight(self.step)
        logs = {}
        for x, x_hat in pending:
            loss, logs = discriminator_loss(self.disc, x, x_hat, self.loss_cfg, weight=weight)
            (loss / len(pending)).backward()
        self.disc_opt.step()
        self.disc_sched.step()
        self.disc_opt.zero_grad(set_to_none=True)
        return {"disc": {k.removeprefix("disc_"): v for k, v in logs.items()}}

    # ------------------------------------------------------------------------------------ reporting
    def log_terms(self, losses: dict, out) -> dict:
        lrs = {"lr": self.scheduler.get_last_lr()[0]}
        if self.disc_sched is not None:
            lrs["disc_lr"] = self.disc_sched.get_last_lr()[0]
        usage = {"pixel": {"utilisation": out.pixel.stats.utilisation, "perplexity": out.pixel.stats.perplexity}}
        if out.semantic is not None and out.semantic is not out.pixel:
            usage["semantic"] = {"utilisation": out.semantic.stats.utilisation,
                                 "perplexity": out.semantic.stats.perplexity}
        psnr_value = losses.pop("psnr", None)
        return {"loss": losses, **lrs, "batch_codes": usage, "psnr": psnr_value, "epoch": self.epoch}

    def eval_batches(self):
        source = resolve_source(self.cfg.eval_data, self.world)
        return build_loader(source, self.model.cfg.backbone.image_size, self.cfg.batch_size, train=False,
                            seed=self.cfg.seed)

    def evaluate(self) -> dict:
        """Held-out figures (rank 0 evaluates; the others skip it to keep DDP in step)."""
        if not self.world.is_main or not self.cfg.eval_data:
            return {}
        teacher = (lambda x: self.teacher(x)) if self.head is not None else None
        result = evaluate_tokenizer(self.model, self.eval_batches(), max_images=self.cfg.eval_samples,
                                    head=self.head, teacher=teacher)
        stage_train_mode(self.model, self.cfg.stage)
        return result

    def final_summary(self) -> dict:
        return {"step": self.step, "preset": self.cfg.preset, "stage": self.cfg.stage,
                "loss_terms": term_status(self.loss_cfg, self.cfg.stage, 1.0 if self.gan else 0.0, self.perceptual),
                "eval": self.evaluate() if self.cfg.eval_data else {}}

    def save_due(self, step: int) -> bool:
        every = self.cfg.save_every if self.cfg.save_every > 0 else -self.cfg.save_every * self.steps_per_epoch
        return every > 0 and step % every == 0

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": capture_rng_state(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.disc is not None:
            state.update(disc=getattr(self.disc, "module", self.disc).state_dict(), disc_opt=self.disc_opt.state_dict(),
                         disc_sched=self.disc_sched.state_dict(), disc_born=self.disc_born)
        return state

    def load_state(self, folder: str | Path) -> None:
        """Resume: the model's weights (strict), then optimizers, discriminator, RNGs and data position."""
        from safetensors.torch import load_file

        folder = Path(folder)
        weights = load_file(str(folder / "model.safetensors"))
        check_state_dict(self.model.state_dict(), weights, str(folder))
        self.model.load_state_dict(weights, strict=True)
        state = load_training_state(folder)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "disc" in state:
            saved_step, self.step = self.step, state["disc_born"]
            self.disc = None
            self.maybe_new_discriminator()  # rebuilds D, its optimizer and schedule as they were born
            self.step = saved_step
            getattr(self.disc, "module", self.disc).load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])
            self.disc_sched.load_state_dict(state["disc_sched"])
        restore_rng_state(state["rng"])


def build_trainer(cfg: TrainConfig, world: dist_utils.World) -> Trainer:
    """Assemble a run from its (validated) config; resume or init-from as asked."""
    seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    loss_cfg = loss_preset(cfg.preset if cfg.preset in ("tiny", "so400m-384", "so400m-256") else "paper", cfg.loss)
    loader = build_loader(resolve_source(cfg.train_data, world), cfg.model.backbone.image_size, cfg.batch_size,
                          train=True, num_workers=cfg.workers, seed=cfg.seed, rank=world.rank,
                          world_size=world.world_size, epoch_samples=cfg.train_num_samples)
    steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    model = DualToken(cfg.model).to(world.device)
    teacher, head = load_teacher_tower(cfg, model)
    if cfg.init_from:
        start = DualToken.from_pretrained(cfg.init_from)
        check_state_dict(model.state_dict(), start.state_dict(), cfg.init_from)
        model.load_state_dict(start.state_dict(), strict=True)
    teacher, head = teacher.to(world.device), head.to(world.device) if head is not None else None
    apply_stage(model, cfg.stage)
    stage_train_mode(model, cfg.stage)
    optimizer = build_adamw(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.adam_eps, cfg.weight_decay)
    scheduler = build_schedule(optimizer, cfg.warmup_steps, total, cfg.min_lr_ratio)
    gan = None
    if cfg.gan_start_epoch is not None or cfg.gan_start_step is not None:
        gan = GanSchedule.build(loss_cfg, steps_per_epoch, cfg.gan_start_epoch, cfg.restart_gan,
                                start_step=cfg.gan_start_step)
    perceptual = None
    if loss_cfg.perceptual_weight > 0 and "perceptual" in get_stage(cfg.stage).terms:
        perceptual = Perceptual(loss_cfg.vgg_weights, loss_cfg.allow_random_lpips).to(world.device)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else world.device.type == "cuda"
    tr = Trainer(cfg=cfg, world=world, model=model, loss_cfg=loss_cfg, teacher=teacher, head=head,
                 optimizer=optimizer, scheduler=scheduler, loader=loader, steps_per_epoch=steps_per_epoch,
                 total_steps=total, gan=gan, perceptual=perceptual, autocast=use_bf16,
                 find_unused=cfg.model.semantic_layer is None or cfg.stage == 2)
    if cfg.resume:
        from .training_state import latest_checkpoint

        folder = Path(cfg.resume)
        found = folder if (folder / "training_state.pt").is_file() else latest_checkpoint(folder / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"--resume {cfg.resume}: no checkpoint there (expected checkpoints/step_*)")
        tr.load_state(found)
    tr.maybe_new_discriminator()
    return tr
