"""What a training run holds between steps, and each kind of step it takes (docs/method.md §4).

    tr = build_trainer(cfg, world)          # training.setup: model, teacher, data, optimizers, GAN
    terms, out = tr.tokenizer_micro_step(model, batch, scale=1 / grad_accum)   # forward, every loss, backward
    tr.optimizer_step()                     # AdamW + learning-rate schedule
    tr.model.update_codebooks()             # one EMA update per optimizer step (all-reduced across ranks)
    tr.adversary.train_step(tr.take_pending(), step)   # one discriminator update when the GAN is on

The loop that calls these in order is ``training.loop``; checkpoints and resume are ``training.checkpoints``.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from dualtoken_lite.datasets.loader import DataError, build_loader
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.evaluation.metrics import psnr
from dualtoken_lite.evaluation.zero_shot import tinyworld_score
from dualtoken_lite.losses.stages import get_stage, stage_train_mode
from dualtoken_lite.losses.terms import targets_from_teacher, term_status, tokenizer_loss
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.tinyworld.shards import resolve_data
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.adversarial import Adversary
from dualtoken_lite.training.checkpoints import capture_rng_state, restore_rng_state
from dualtoken_lite.training.config import TrainConfig
from dualtoken_lite.training.precision import precision_context

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Everything a run holds between steps; ``state_dict()`` is what a checkpoint saves besides the model."""

    cfg: TrainConfig  # the run's validated config (cfg.loss: every loss weight)
    world: dist_utils.World  # rank, world size, device
    model: DualToken  # the tokenizer being trained (unwrapped; the loop wraps it in DDP)
    teacher: nn.Module  # frozen trunk giving the distillation targets
    siglip: nn.Module | None  # the tiny world's teacher with its text tower (zero-shot accuracy), else None
    optimizer: torch.optim.Optimizer  # AdamW of the tokenizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # warmup + cosine
    loader: object  # datasets.loader's resumable loader of training batches
    steps_per_epoch: int  # optimizer steps per data epoch (after gradient accumulation)
    total_steps: int  # optimizer steps of the whole run
    adversary: Adversary | None = None  # the discriminator's side; None when the run has no GAN
    perceptual: nn.Module | None = None  # LPIPS, when the loss config asks for it
    autocast: bool = False  # bf16 autocast around the forward pass
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current data epoch
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    skipped_before: int = 0  # bad samples skipped by this rank in the epochs before the current one
    pending: list = field(default_factory=list)  # (images, detached reconstructions) of this step, for D
    last_grad_norm: float | None = None  # the gradient norm before clipping at the last step (when clipping)

    # ------------------------------------------------------------------------------------------ data
    def batches(self):
        """Micro-batches forever, epoch after epoch, starting at the saved data position.

        An epoch that yields no batch at all (every sample bad, or fewer good samples than one batch) raises
        DataError instead of starting the next, equally empty, epoch forever.
        """
        while True:
            self.loader.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            yielded = 0
            for batch in self.loader:
                self.batch_in_epoch += 1
                yielded += 1
                yield batch
            if yielded == 0 and self.batch_in_epoch == 0:
                raise DataError(f"the training data gave no batch in epoch {self.epoch}: {self.loader.describe()}. "
                                "Check the data (or lower --batch-size)")
            if self.loader.skips.total:
                log.warning("epoch %d skipped %d bad samples: %s", self.epoch, self.loader.skips.total,
                            self.loader.skips.as_dict())
            self.skipped_before += self.loader.skips.total
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def skipped_samples(self) -> int:
        """Bad samples skipped in the whole run so far, summed over ranks."""
        mine = float(self.skipped_before + self.loader.skips.total)
        return int(dist_utils.all_reduce_sum(torch.tensor(mine)).item())

    # ------------------------------------------------------------------------------------ tokenizer
    def gan_weight(self, step: int) -> float:
        """The weight of the tokenizer's adversarial term at ``step`` (0 when the GAN is off)."""
        return self.adversary.weight(step) if self.adversary is not None else 0.0

    def gan_on(self, step: int) -> bool:
        return self.gan_weight(step) > 0 and "gan" in get_stage(self.cfg.stage).terms

    def tokenizer_micro_step(self, model: nn.Module, batch: dict, scale: float):
        """Forward one micro-batch, compute every loss term, backpropagate ``scale * total``."""
        x = batch["image"].to(self.world.device, non_blocking=True)  # (B, 3, h, w) in [-1, 1]
        gan_on = self.gan_on(self.step)
        with self.autocast_context():
            out = model(x)
            targets = None
            if self.model.cfg.semantic_layer is not None and self.cfg.loss.sem_weight > 0:
                targets = targets_from_teacher(self.teacher, x, self.model.cfg.semantic_layer)
            total, terms = tokenizer_loss(
                out, x, self.cfg.loss, teacher=targets, perceptual=self.perceptual,
                discriminator=self.adversary.disc if gan_on else None,
                last_layer=self.model.decoder.conv_out.weight, stage=self.cfg.stage,
                gan_weight=self.gan_weight(self.step) if gan_on else 0.0,
            )
        (total * scale).backward()
        if gan_on:
            self.pending.append((x, out.reconstruction.detach()))
        terms["psnr"] = psnr(out.reconstruction.detach(), x).mean()
        return terms, out

    def autocast_context(self) -> ExitStack:
        """bf16 autocast when asked, with the math attention kernel on the CPU (training/precision.py)."""
        return precision_context(self.world.device.type, self.autocast)

    def optimizer_step(self) -> None:
        """Optional global-norm gradient clipping (grads are already summed over micro-batches and ranks), AdamW."""
        if self.cfg.grad_clip_norm is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def refresh_discriminator(self) -> None:
        """Create or restart the discriminator where the GAN schedule says so."""
        if self.adversary is not None:
            self.adversary.refresh(self.step)

    def discriminator_step(self) -> dict:
        """One D update on this step's pending pairs (summed over micro-batches)."""
        pending, self.pending = self.pending, []
        return self.adversary.train_step(pending, self.step)

    # ------------------------------------------------------------------------------------ reporting
    def log_terms(self, losses: dict, out) -> dict:
        lrs = {"lr": self.scheduler.get_last_lr()[0]}
        if self.last_grad_norm is not None:
            lrs["grad_norm"] = self.last_grad_norm
        if self.adversary is not None and self.adversary.last_lr() is not None:
            lrs["disc_lr"] = self.adversary.last_lr()
        usage = {"pixel": {"utilisation": out.pixel.stats.utilisation, "perplexity": out.pixel.stats.perplexity}}
        if out.semantic is not None and out.semantic is not out.pixel:
            usage["semantic"] = {"utilisation": out.semantic.stats.utilisation,
                                 "perplexity": out.semantic.stats.perplexity}
        psnr_value = losses.pop("psnr", None)
        return {"loss": losses, **lrs, "batch_codes": usage, "psnr": psnr_value, "epoch": self.epoch}

    def evaluate(self) -> dict:
        """Held-out figures through the codes (rank 0 evaluates; the others skip it to keep DDP in step)."""
        if not self.world.is_main or not self.cfg.eval_data:
            return {}
        source = resolve_data(self.cfg.eval_data, self.world.is_main, dist_utils.barrier)
        batches = build_loader(source, self.model.cfg.backbone.image_size, self.cfg.batch_size, train=False,
                               seed=self.cfg.seed)
        semantic = tinyworld_score(self.siglip, self.world.device) if self.siglip is not None else None
        result = evaluate_codes(self.model, batches, max_images=self.cfg.eval_samples, semantic=semantic)
        stage_train_mode(self.model, self.cfg.stage)
        return result

    def final_summary(self, skipped: int) -> dict:
        gan = 1.0 if self.adversary is not None else 0.0
        return {"step": self.step, "preset": self.cfg.preset, "stage": self.cfg.stage,
                "precision": "bf16 autocast" if self.autocast else "fp32", "data_skipped": skipped,
                "loss_terms": term_status(self.cfg.loss, self.cfg.stage, gan, self.perceptual),
                "eval": self.evaluate() if self.cfg.eval_data else {}}

    def save_due(self, step: int) -> bool:
        every = self.cfg.save_every if self.cfg.save_every > 0 else -self.cfg.save_every * self.steps_per_epoch
        return every > 0 and step % every == 0

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything but the model's weights that a resume needs (see training.checkpoints)."""
        state = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": capture_rng_state(),
                 "skipped_before": self.skipped_before,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.adversary is not None:
            state.update(self.adversary.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Put back optimizers, discriminator, data position and, last, every RNG."""
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.skipped_before = state["skipped_before"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.adversary is not None:
            self.adversary.load_state_dict(state)
        restore_rng_state(state["rng"])  # after D's re-creation, whose init draws random numbers
