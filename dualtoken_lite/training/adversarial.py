"""The discriminator's side of a run: when it exists, its optimizer and schedule, its step, its saved state.

The GAN schedule (``losses.gan.GanSchedule``) says when the adversarial terms are on and when the discriminator
is re-created; this module owns the discriminator those answers refer to. Its whole state (weights, Adam,
learning-rate schedule, the step it was created at) is saved with every checkpoint, so a resumed run continues
the same adversarial game (the released code restarted it, docs/method.md §7.6).

    adv = Adversary(loss_cfg, schedule, steps_per_epoch, total_steps, device, distributed)
    adv.refresh(step)                   # create D when the schedule switches it on, re-create it on restarts
    adv.train_step(pending, step)       # one D update on this step's real images and detached reconstructions
"""

from __future__ import annotations

import torch
from torch import nn

from dualtoken_lite.losses.config import LossConfig
from dualtoken_lite.losses.gan import GanSchedule, build_discriminator
from dualtoken_lite.losses.terms import discriminator_loss
from dualtoken_lite.training.optim import warmup_cosine


class Adversary:
    """The discriminator, its Adam optimizer and its warmup + cosine schedule, built on the GAN schedule."""

    def __init__(self, loss_cfg: LossConfig, schedule: GanSchedule, steps_per_epoch: int, total_steps: int,
                 device: torch.device, distributed: bool = False):
        self.loss_cfg, self.schedule = loss_cfg, schedule
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.device, self.distributed = device, distributed
        self.disc: nn.Module | None = None  # the live discriminator (DDP-wrapped under torchrun)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.born = 0  # the step at which the live discriminator was (re)created

    def weight(self, step: int) -> float:
        """The weight of the tokenizer's adversarial term at ``step`` (0 before the discriminator exists)."""
        return self.schedule.gan_weight(step) if self.disc is not None else 0.0

    def refresh(self, step: int) -> None:
        """Create D when the schedule switches it on, and re-create it (with its optimizer) on restarts."""
        if self.disc is None and self.schedule.gan_active(step) or self.schedule.should_restart(step):
            self.create(step)

    def create(self, born: int) -> None:
        """A fresh discriminator, Adam and learning-rate schedule, as created at step ``born``."""
        c = self.loss_cfg
        disc = build_discriminator(c.disc_channels, c.disc_layers, device=self.device)
        self.disc = nn.parallel.DistributedDataParallel(disc) if self.distributed else disc
        self.optimizer = torch.optim.Adam(self.disc.parameters(), lr=c.disc_lr, betas=c.disc_betas,
                                          weight_decay=c.disc_weight_decay)
        warm = int(c.disc_warmup_epochs * self.steps_per_epoch)
        left = max(1, self.total_steps - born)
        floor = c.disc_min_lr / c.disc_lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, max(1, warm), left, min(1.0, floor)))
        self.born = born

    def train_step(self, pending: list[tuple[torch.Tensor, torch.Tensor]], step: int) -> dict:
        """One D update on (images, detached reconstructions) pairs, the loss averaged over micro-batches."""
        if not pending:
            return {}
        weight = self.schedule.disc_loss_weight(step)
        logs = {}
        for x, x_hat in pending:
            loss, logs = discriminator_loss(self.disc, x, x_hat, self.loss_cfg, weight=weight)
            (loss / len(pending)).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"disc": {k.removeprefix("disc_"): v for k, v in logs.items()}}

    def last_lr(self) -> float | None:
        return self.scheduler.get_last_lr()[0] if self.scheduler is not None else None

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the discriminator (empty before it exists)."""
        if self.disc is None:
            return {}
        return {"disc": getattr(self.disc, "module", self.disc).state_dict(), "disc_opt": self.optimizer.state_dict(),
                "disc_sched": self.scheduler.state_dict(), "disc_born": self.born}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the discriminator as it was created, then put back its weights, optimizer and schedule."""
        if "disc" not in state:
            return
        self.create(state["disc_born"])
        getattr(self.disc, "module", self.disc).load_state_dict(state["disc"])
        self.optimizer.load_state_dict(state["disc_opt"])
        self.scheduler.load_state_dict(state["disc_sched"])
