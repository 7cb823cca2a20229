"""Assemble a training run from its validated config: seeds, data, model, teacher, optimizers, GAN, resume.

    tr = build_trainer(cfg, world)

The order matters for exact resumes and reproducibility: seeds first, then the data loader, the model (whose
random initialisation draws from the seeded RNG), the teacher, the optimizer, and last the saved state
of a resumed run (which restores every RNG as it was when the checkpoint was written).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualtoken_lite.datasets.loader import DataError, build_loader
from dualtoken_lite.losses.gan import GanSchedule
from dualtoken_lite.losses.perceptual import build_perceptual
from dualtoken_lite.losses.stages import apply_stage, get_stage, stage_train_mode
from dualtoken_lite.model.config import ModelConfig
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.group_norm import set_fast_group_norm
from dualtoken_lite.model.hf_siglip import is_hf_spec, load_hf_trunk
from dualtoken_lite.model.onednn_linear import use_onednn_linear
from dualtoken_lite.model.pretrained import check_state_dict
from dualtoken_lite.model.release import model_from_release
from dualtoken_lite.model.release_files import read_release_checkpoint
from dualtoken_lite.tinyworld.shards import resolve_data
from dualtoken_lite.tinyworld.teacher import TinySigLIP, load_teacher
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.adversarial import Adversary
from dualtoken_lite.training.allocator import keep_freed_memory
from dualtoken_lite.training.checkpoints import resume
from dualtoken_lite.training.config import TrainConfig
from dualtoken_lite.training.optim import build_adamw, build_schedule
from dualtoken_lite.training.precision import resolve_bf16
from dualtoken_lite.training.steps import Trainer


def seed_everything(seed: int) -> None:
    """The same seed on every rank: identical initial weights everywhere (data differs by rank, not by seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_teacher(spec: str, model: DualToken | None, tower_init: str = "teacher"
                  ) -> tuple[nn.Module, TinySigLIP | None]:
    """The frozen distillation teacher (an image tower) and, for the tiny world, the whole tiny SigLIP, whose
    text tower scores the tokenizer zero-shot.

    "shipped": the tiny world's trained teacher, whose image tower is also the starting point of the tokenizer's
    tower (unless ``tower_init="scratch"``, which keeps the tower's random init);
    "backbone": a frozen copy of the tower as built (the pretrained SigLIP at paper scale);
    "hf:<repo id>" or a transformers SigLIP / SigLIP2 folder: that tower, frozen (model/hf_siglip.py);
    a teacher folder: ``RUN/model`` of ``python -m dualtoken_lite teacher --out RUN`` (``data/teacher/`` is a copy
    of one).
    """
    if is_hf_spec(spec):
        image_size = model.cfg.backbone.image_size if model is not None else None
        return load_hf_trunk(spec, image_size).eval().requires_grad_(False), None
    if spec == "shipped" or (spec and Path(spec).is_dir()):
        siglip = load_teacher(None if spec == "shipped" else spec)
        if tower_init == "teacher":
            model.encoder.trunk.load_state_dict(siglip.trunk.state_dict(), strict=True)
        return siglip.trunk, siglip
    if spec == "backbone":
        return copy.deepcopy(model.encoder.trunk).eval().requires_grad_(False), None
    raise ValueError(f"teacher={spec!r}: use 'shipped' (tiny world), 'backbone' or a teacher folder")


def load_start(spec: str, model_cfg: ModelConfig) -> DualToken:
    """The weights a new run starts from: a model folder (ours), or a release checkpoint file converted into the
    run's model, which must have the release's architecture (model/release_config.py)."""
    if Path(spec).is_file():  # the release's --load_from takes its own checkpoint files
        model, _, notes = model_from_release(read_release_checkpoint(spec), model_cfg=model_cfg)
        for note in notes:
            print(f"note ({spec}): {note}")
        return model
    return DualToken.from_pretrained(spec)


def apply_speed_levers(model: DualToken, teacher: nn.Module, cfg: TrainConfig) -> None:
    """The levers of ``TrainConfig`` that change how the model computes, never what (benchmarks/step_speed.py)."""
    set_fast_group_norm(model, cfg.fast_group_norm)
    for module in (model, teacher):
        use_onednn_linear(module, cfg.onednn_linear)
    if cfg.keep_freed_memory and next(model.parameters()).device.type == "cpu":
        keep_freed_memory()  # process-wide: glibc's malloc thresholds
    if cfg.compile_decoder:  # in place: the state dict keeps its keys (no "_orig_mod." prefix)
        model.post_quant_block.compile()
        model.decoder.compile()


def build_trainer(cfg: TrainConfig, world: dist_utils.World) -> Trainer:
    """Assemble a run from its (validated) config; start from ``init_from`` or resume as the config asks."""
    seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    source = resolve_data(cfg.train_data, world.is_main, dist_utils.barrier)
    loader = build_loader(source, cfg.model.backbone.image_size, cfg.batch_size, train=True,
                          num_workers=cfg.workers, seed=cfg.seed, rank=world.rank, world_size=world.world_size,
                          epoch_samples=cfg.train_num_samples)
    if not dist_utils.all_ok(len(loader) > 0):  # every rank stops together, none waits in a collective
        raise DataError(f"--train-data {cfg.train_data!r} cannot fill one batch"
                        + (f": {loader.describe()}" if len(loader) == 0 else " on another rank")
                        + "; give more data or a smaller --batch-size")
    steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    model = DualToken(cfg.model).to(world.device)
    teacher, siglip = build_teacher(cfg.teacher, model, cfg.tower_init)
    if cfg.init_from:
        start = load_start(cfg.init_from, cfg.model)
        check_state_dict(model.state_dict(), start.state_dict(), cfg.init_from)
        model.load_state_dict(start.state_dict(), strict=True)
    teacher, siglip = teacher.to(world.device), siglip.to(world.device) if siglip is not None else None
    apply_stage(model, cfg.stage)
    stage_train_mode(model, cfg.stage)
    apply_speed_levers(model, teacher, cfg)
    optimizer = build_adamw(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.adam_eps, cfg.weight_decay,
                            fused=cfg.fused_adamw)
    scheduler = build_schedule(optimizer, cfg.warmup_steps, total, cfg.min_lr_ratio)
    adversary = None
    gan_asked = cfg.gan_start_epoch is not None or cfg.gan_start_step is not None
    if gan_asked and "gan" in get_stage(cfg.stage).terms:
        # a run started from trained weights (--load_from) turns the GAN on at the start of its epoch, as the
        # release does; a fresh run waits for that epoch's second half (docs/method.md §3)
        schedule = GanSchedule.build(cfg.loss, steps_per_epoch, cfg.gan_start_epoch, cfg.restart_gan,
                                     start_step=cfg.gan_start_step, start_at_epoch_begin=cfg.init_from is not None)
        adversary = Adversary(cfg.loss, schedule, steps_per_epoch, total, world.device, world.distributed)
    perceptual = build_perceptual(cfg.loss) if "perceptual" in get_stage(cfg.stage).terms else None
    perceptual = perceptual.to(world.device) if perceptual is not None else None
    use_bf16, note = resolve_bf16(cfg.bf16, world.device.type)
    if note and world.is_main:
        print(f"note: {note}")
    tr = Trainer(cfg=cfg, world=world, model=model, teacher=teacher, siglip=siglip, optimizer=optimizer,
                 scheduler=scheduler, loader=loader, steps_per_epoch=steps_per_epoch, total_steps=total, adversary=adversary,
                 perceptual=perceptual, autocast=use_bf16)
    if cfg.resume:
        resume(tr, cfg.resume)
    tr.refresh_discriminator()
    return tr
