"""When the adversarial loss is on, at what weight, and when the discriminator restarts (SPEC §3, §4).

The release's schedule, read off its training loop and expressed in optimizer steps (``step`` counts optimizer
steps from 0; ``steps_per_epoch`` of them make an epoch):

* switch-on: the discriminator starts in the SECOND half of the 0-based epoch ``start_epoch``, i.e. at batch
  ``i >= steps_per_epoch / 2`` of that epoch -> first active step ``start_epoch * S + ceil(S / 2)``.
  (``start_at_epoch_begin=True`` is the release's ``--load_from`` variant: on from the epoch's first step.)
* weights: during the switch-on epoch the discriminator loss has weight 1, afterwards 0.75. The generator's
  adversarial term is ``0.75 * g_w * L_G`` throughout in the release; both weights are fields, so the other
  reading of SPEC §4 ("weight 1 in that epoch" on the generator side) is one override away.
* restart: every ``restart_every`` epochs after ``start_epoch`` the discriminator and its optimizer are re-created
  at the first step of epoch ``start_epoch + k * restart_every`` (k >= 1). The release's run uses
  ``--gan_start_epoch 0 --restart_gan 20`` with 20 epochs: no restart happens.

The timing (start epoch or step, restart period) belongs to the run config; the weights come from the loss
config (``GanSchedule.build(loss_cfg, steps_per_epoch, start_epoch, restart_every)``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GanSchedule:
    """The adversarial schedule in epochs, answered in steps; pure functions of the global step."""

    steps_per_epoch: int  # S, optimizer steps per epoch (after gradient accumulation)
    start_epoch: int | None = 0  # 0-based epoch in whose second half the GAN switches on; None = never
    restart_every: int | None = None  # re-create D every N epochs after start_epoch; None = never
    gen_weight_first_epoch: float = 0.75  # generator-side weight during the switch-on epoch (release: 0.75)
    gen_weight: float = 0.75  # generator-side weight after the switch-on epoch (release: 0.75)
    disc_weight_first_epoch: float = 1.0  # discriminator-loss weight during the switch-on epoch (release: 1)
    disc_weight: float = 0.75  # discriminator-loss weight afterwards (release: 0.75)
    start_at_epoch_begin: bool = False  # switch on at the start of start_epoch instead of its middle
    start_at_step: int | None = None  # an exact first step instead (wins over start_epoch; its epoch is "first")

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch} must be >= 1")
        if self.start_epoch is not None and self.start_epoch < 0:
            raise ValueError(f"start_epoch={self.start_epoch} must be >= 0 (0-based) or None for no GAN")
        if self.start_at_step is not None and self.start_at_step < 0:
            raise ValueError(f"start_at_step={self.start_at_step} must be >= 0, or None to use start_epoch")
        if self.restart_every is not None and self.restart_every < 1:
            raise ValueError(f"restart_every={self.restart_every} must be >= 1 epochs, or None for never")

    @classmethod
    def build(cls, loss_cfg, steps_per_epoch: int, start_epoch: int | None, restart_every: int | None = None,
              start_step: int | None = None, start_at_epoch_begin: bool = False) -> GanSchedule:
        """Timing from the run (epochs or a step), weights from a ``LossConfig``'s gan_/disc_ fields."""
        return cls(
            steps_per_epoch=steps_per_epoch,
            start_epoch=start_epoch,
            restart_every=restart_every,
            gen_weight_first_epoch=loss_cfg.gan_gen_weight_first_epoch,
            gen_weight=loss_cfg.gan_gen_weight,
            disc_weight_first_epoch=loss_cfg.disc_loss_weight_first_epoch,
            disc_weight=loss_cfg.disc_loss_weight,
            start_at_epoch_begin=start_at_epoch_begin,
            start_at_step=start_step,
        )

    @property
    def first_epoch(self) -> int | None:
        """The switch-on epoch (0-based) that weights and restarts count from; None if the GAN never starts.

        It is ``start_epoch`` even when its second half is empty (S = 1: the GAN then starts one epoch later,
        already at the later weight, as in the release), or the epoch of ``start_at_step``.
        """
        if self.start_at_step is not None:
            return self.start_at_step // self.steps_per_epoch
        return self.start_epoch

    @property
    def start_step(self) -> int | None:
        """First step with the GAN on: ``start_epoch * S + ceil(S / 2)`` (None if it never starts)."""
        if self.start_at_step is not None:
            return self.start_at_step
        if self.start_epoch is None:
            return None
        offset = 0 if self.start_at_epoch_begin else (self.steps_per_epoch + 1) // 2  # first i >= S / 2
        return self.start_epoch * self.steps_per_epoch + offset

    @property
    def restart_every_steps(self) -> int | None:
        """The restart period in steps (``restart_every * S``), or None."""
        return None if self.restart_every is None else self.restart_every * self.steps_per_epoch

    def epoch(self, step: int) -> int:
        """0-based epoch that ``step`` belongs to."""
        _check_step(step)
        return step // self.steps_per_epoch

    def gan_active(self, step: int) -> bool:
        """Whether the discriminator trains and the generator gets an adversarial term at ``step``."""
        _check_step(step)
        return self.start_step is not None and step >= self.start_step

    def in_first_epoch(self, step: int) -> bool:
        """Whether ``step`` lies in the switch-on epoch (while the GAN is active)."""
        return self.gan_active(step) and self.epoch(step) == self.first_epoch

    def gan_weight(self, step: int) -> float:
        """Generator-side adversarial weight at ``step`` (0 while the GAN is off)."""
        if not self.gan_active(step):
            return 0.0
        return self.gen_weight_first_epoch if self.in_first_epoch(step) else self.gen_weight

    def disc_loss_weight(self, step: int) -> float:
        """Weight of the discriminator's loss at ``step`` (0 while the GAN is off)."""
        if not self.gan_active(step):
            return 0.0
        return self.disc_weight_first_epoch if self.in_first_epoch(step) else self.disc_weight

    def generation(self, step: int) -> int:
        """Which discriminator is live at ``step``: 0 before any restart, k after the k-th (-1: none yet)."""
        if not self.gan_active(step):
            return -1
        if self.restart_every is None:
            return 0
        return (self.epoch(step) - self.first_epoch) // self.restart_every

    def should_create(self, step: int) -> bool:
        """True at the step where a discriminator (and its optimizer) must be freshly built: the switch-on
        step and every restart step. A resumed run compares ``generation`` with its checkpoint instead."""
        return self.gan_active(step) and (step == self.start_step or self.should_restart(step))

    def should_restart(self, step: int) -> bool:
        """True at the first step of epoch ``start_epoch + k * restart_every`` for k >= 1."""
        if not self.gan_active(step) or self.restart_every is None or step % self.steps_per_epoch:
            return False
        since = self.epoch(step) - self.first_epoch
        return since > 0 and since % self.restart_every == 0

    def restart_steps(self, total_steps: int) -> list[int]:
        """All restart steps below ``total_steps`` (for logs and plots)."""
        if self.first_epoch is None or self.restart_every is None:
            return []
        first = (self.first_epoch + self.restart_every) * self.steps_per_epoch
        return list(range(first, total_steps, self.restart_every * self.steps_per_epoch))


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step={step} must be >= 0 (steps count optimizer updates from 0)")
