"""The GAN schedule: switch-on in the second half of the start epoch, weights, restarts every N epochs, and
agreement step by step with a transcription of the release's training loop."""

import pytest
import torch

from dualtoken_lite.losses.config import LossConfig
from dualtoken_lite.losses.gan import GanSchedule
from dualtoken_lite.training.adversarial import Adversary
from dualtoken_lite.training.presets import loss_preset


def creation_steps(schedule: GanSchedule, steps: int) -> list[int]:
    """The steps at which the trainer's Adversary (re)creates the discriminator, over ``steps`` steps."""
    adv = Adversary(LossConfig(), schedule, schedule.steps_per_epoch, steps, torch.device("cpu"))
    made = []

    def create(born: int) -> None:
        made.append(born)
        adv.disc = object()

    adv.create = create
    for step in range(steps):
        adv.refresh(step)
    return made


def release_loop(steps_per_epoch: int, epochs: int, start: int, restart: int):
    """The release's epoch/batch loop (main.py + train.py, accum_freq 1), reduced to what the GAN does.

    Yields (step, use_discriminator, generator weight, discriminator weight, discriminator was just created).
    """
    for epoch in range(epochs):
        gan_epoch = epoch - start
        created = gan_epoch == 0 or (gan_epoch > 0 and gan_epoch % restart == 0)
        for i in range(steps_per_epoch):
            step = steps_per_epoch * epoch + i
            use = not (epoch < start or (epoch == start and i < steps_per_epoch / 2))
            d_weight = 0.75  # constant in the generator's total loss
            disc = (1.0 if epoch == start else d_weight) if use else 0.0
            # the release builds D at the epoch start; it is first *used* at the first active step
            yield step, use, d_weight if use else 0.0, disc, created and use and (i == 0 or epoch == start)
            created = created and not use  # report the creation once, at its first use


@pytest.mark.parametrize("spe, epochs, start, restart", [(10, 6, 0, 20), (11, 7, 1, 2), (4, 12, 2, 3),
                                                         (1, 5, 1, 1), (7, 9, 0, 4)])
def test_schedule_matches_the_release_loop_step_by_step(spe, epochs, start, restart):
    s = GanSchedule.build(loss_preset("so400m-384"), spe, start_epoch=start, restart_every=restart)
    created_at = []
    for step, use, gen_w, disc_w, created in release_loop(spe, epochs, start, restart):
        assert s.gan_active(step) == use, step
        assert s.gan_weight(step) == gen_w, step
        assert s.disc_loss_weight(step) == disc_w, step
        created_at += [step] if created else []
    assert creation_steps(s, spe * epochs) == created_at


@pytest.mark.parametrize("spe, first", [(10, 5), (11, 6), (1, 1), (2, 1)])
def test_switch_on_is_the_first_batch_of_the_second_half(spe, first):
    s = GanSchedule(steps_per_epoch=spe, start_epoch=0)
    assert s.start_step == first
    assert not s.gan_active(first - 1) and s.gan_active(first)
    assert s.gan_weight(first - 1) == 0.0
    # with S = 1 the start epoch has no second half: the GAN starts in the next epoch, at the later weight
    assert s.disc_loss_weight(first) == (1.0 if spe > 1 else 0.75)


def test_weights_one_in_the_switch_on_epoch_then_075():
    s = GanSchedule(steps_per_epoch=8, start_epoch=2, restart_every=None)
    assert s.start_step == 20
    assert [s.disc_loss_weight(t) for t in (19, 20, 23, 24, 100)] == [0.0, 1.0, 1.0, 0.75, 0.75]
    assert [s.gan_weight(t) for t in (19, 20, 24)] == [0.0, 0.75, 0.75]
    other = GanSchedule(steps_per_epoch=8, start_epoch=2, weights=LossConfig(gan_gen_weight_first_epoch=1.0))
    assert [other.gan_weight(t) for t in (20, 23, 24)] == [1.0, 1.0, 0.75]


def test_restarts_every_n_epochs_in_steps():
    s = GanSchedule(steps_per_epoch=4, start_epoch=1, restart_every=3)
    restarts = [t for t in range(60) if s.should_restart(t)]
    assert restarts == [16, 28, 40, 52]
    assert creation_steps(s, 60) == [6, 16, 28, 40, 52]


def test_variants_start_of_epoch_exact_step_and_never():
    assert GanSchedule(steps_per_epoch=10, start_epoch=3, start_at_epoch_begin=True).start_step == 30
    exact = GanSchedule(steps_per_epoch=10, start_epoch=None, start_at_step=37, restart_every=2)
    assert exact.start_step == 37 and exact.first_epoch == 3
    assert exact.disc_loss_weight(39) == 1.0 and exact.disc_loss_weight(40) == 0.75
    assert [t for t in range(80) if exact.should_restart(t)] == [50, 70]
    never = GanSchedule(steps_per_epoch=10, start_epoch=None, restart_every=1)
    assert not any(never.gan_active(t) or never.should_restart(t) for t in range(100))
    assert never.gan_weight(50) == 0.0 and creation_steps(never, 100) == []


def test_weights_come_from_the_loss_config():
    cfg = loss_preset("tiny", {"gan_gen_weight": 0.5, "disc_loss_weight_first_epoch": 2.0})
    s = GanSchedule.build(cfg, steps_per_epoch=4, start_epoch=0)
    assert s.gan_weight(4) == 0.5 and s.disc_loss_weight(2) == 2.0 and s.disc_loss_weight(4) == 0.75


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(steps_per_epoch=4, start_epoch=-1), "start_epoch"),
    (dict(steps_per_epoch=4, restart_every=0), "restart_every"),
    (dict(steps_per_epoch=4, start_at_step=-2), "start_at_step"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GanSchedule(**kwargs)
    with pytest.raises(ValueError, match="step=-1"):
        GanSchedule(steps_per_epoch=4).gan_active(-1)
