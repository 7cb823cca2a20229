"""Train DualToken: `python -m dualtoken_lite.train`, on one CPU or, under torchrun, on many GPUs (docs/method.md §4).

    python -m dualtoken_lite.train --preset tiny                      # the main job: ~10 min on a 2-core CPU
    torchrun --nproc_per_node 8 -m dualtoken_lite.train --preset so400m-384 \\
        --train-data 'cc12m-train-{0000..2175}.tar' --batch-size 32  # the paper's run (DDP, bf16, NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dualtoken_lite.train ...

The original release's flags (--sem_weight, --stage, --name, --train-data, --warmup, --gan_start_epoch, ...) are
accepted with their meanings (training.arguments.RELEASE_FLAGS). One optimizer step = `grad_accum` micro-batches whose
gradients are summed, then one AdamW step, then ONE codebook EMA update (all-reduced across ranks), then one
discriminator step when the GAN is on. A run writes into --out:

    config.json  metrics.jsonl  images/step_*.png  checkpoints/step_*/  summary.json  model/ (final weights)
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from dualtoken_lite.datasets.loader import DataError
from dualtoken_lite.settings import to_dict
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import parse_command_line
from dualtoken_lite.training.checkpoints import atomic_write_text, save_checkpoint
from dualtoken_lite.training.config import TrainConfig
from dualtoken_lite.training.logs import (
    MetricsLogger,
    reconstruction_grid,
    save_grid,
    truncate_metrics,
    write_summary,
)
from dualtoken_lite.training.run_folder import (
    TEACHER_RECORD,
    Plan,
    RunFolderError,
    check_writable,
    clear_run,
    plan_start,
    teacher_record,
)
from dualtoken_lite.training.setup import build_trainer
from dualtoken_lite.training.steps import Trainer


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the run stops and the last good checkpoint stays as it was."""


@dataclass
class RunHooks:
    """Calls at fixed points of the loop, for tests and tools (the resume tests kill the process in them)."""

    after_losses: Callable[[int, dict], None] | None = None  # (step, losses) before the finiteness check
    after_step: Callable[[int], None] | None = None  # (step) right after optimizer step ``step``
    before_checkpoint_commit: Callable[[int], None] | None = None  # (step) files written, not yet renamed

    def call(self, name: str, *args) -> None:
        hook = getattr(self, name)
        if hook is not None:
            hook(*args)


def check_finite_weights(model: torch.nn.Module, step: int) -> None:
    """Refuse to save non-finite weights: a model, checkpoint or summary is only ever written from finite ones."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteLossError(
            f"{len(bad)} tensors hold NaN or inf after step {step} (e.g. {bad[:3]}). Stopped without saving; the "
            "last good checkpoint is intact (lower --lr, check the data, or resume from it with --resume)")


def _check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    bad = {k: float(v) for k, v in losses.items() if isinstance(v, torch.Tensor) and not torch.isfinite(v).all()}
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {bad}. Stopped without saving; the last good checkpoint is intact "
            "(lower --lr, check the data, or resume from it with --resume)"
        )


def decide(cfg: TrainConfig, given: set[str] | None, world) -> Plan:
    """What this start does with --out (training.run_folder), decided on rank 0 and shared with every rank."""
    plan: Plan | Exception | None = None
    if world.is_main:
        try:
            check_writable(Path(cfg.out))
            plan = plan_start(cfg, given)
        except RunFolderError as err:
            plan = err
    plan = dist_utils.broadcast_object(plan)
    if isinstance(plan, Exception):
        raise plan
    return plan


def run(cfg: TrainConfig, hooks: RunHooks | None = None, given: set[str] | None = None) -> dict:
    """Train according to ``cfg`` (already validated) and return the final summary (rank 0).

    ``given``: the fields the command line set, which a resume compares with the run's saved config (None: all).
    """
    hooks = hooks or RunHooks()
    world = dist_utils.setup(cfg.device)
    plan = decide(cfg, given, world)
    cfg = plan.cfg
    run_dir = Path(cfg.out)
    if plan.action == "finished":
        if world.is_main:
            print(f"{run_dir} holds a finished run (step {plan.summary.get('step')}): nothing to train. Its "
                  f"summary is {run_dir / 'summary.json'}; --max-steps N continues it, --overwrite starts over.",
                  file=sys.stderr)
        dist_utils.teardown()
        return {**plan.summary, "already_finished": True} if world.is_main else {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world.is_main:
        if plan.action == "new" and cfg.overwrite:
            clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if plan.action == "new" or plan.changed:  # a resumed run keeps its saved config, plus allowed changes
            atomic_write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2))
        record = teacher_record(cfg.teacher)
        if plan.action == "new" and record is not None:  # which teacher this run distils from (resume checks it)
            atomic_write_text(run_dir / TEACHER_RECORD, json.dumps(record, indent=2))
        for name, (before, now) in (plan.changed or {}).items():
            print(f"resume: {name} changed from {before!r} to {now!r}", file=sys.stderr)
    dist_utils.barrier()
    tr: Trainer = build_trainer(cfg, world)
    find_unused = cfg.model.semantic_layer is None or cfg.stage == 2  # branches without a gradient
    model = DDP(tr.model, find_unused_parameters=find_unused) if world.distributed else tr.model
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, enabled=world.is_main)
    if tr.step and world.is_main:
        truncate_metrics(run_dir, tr.step)
    bar = tqdm(total=tr.total_steps, initial=tr.step, disable=not world.is_main, desc="train", unit="step")
    batches = tr.batches()
    t0, images_seen = time.perf_counter(), 0
    while tr.step < tr.total_steps:
        step = tr.step
        tr.refresh_discriminator()
        micro, failure = [], None
        try:
            micro = [next(batches) for _ in range(cfg.grad_accum)]
        except DataError as err:
            failure = err
        if not dist_utils.all_ok(failure is None):  # one rank out of data stops them all, none hangs
            raise failure or DataError(f"another rank ran out of training data at step {step + 1}")
        losses, last = {}, None
        for i, batch in enumerate(micro):
            sync = contextlib.nullcontext() if (i == len(micro) - 1 or not world.distributed) else model.no_sync()
            with sync:
                terms, last = tr.generator_micro_step(model, batch, scale=1.0 / cfg.grad_accum)
            for k, v in terms.items():
                losses[k] = losses.get(k, 0.0) + v.detach() / cfg.grad_accum
            images_seen += batch["image"].shape[0] * world.world_size
        hooks.call("after_losses", step + 1, losses)
        _check_finite(losses, step + 1)
        tr.optimizer_step()
        codebook_log = tr.model.update_codebooks()
        disc_log = tr.discriminator_step() if tr.gan_on(step) else {}
        tr.step += 1
        bar.update(1)
        hooks.call("after_step", tr.step)
        if tr.step % cfg.log_every == 0 or tr.step == tr.total_steps:
            rate = images_seen / (time.perf_counter() - t0)
            flat = logger.log(tr.step, {**tr.log_terms(losses, last), "codebook": codebook_log, **disc_log,
                                        "images_per_s": rate, "data_skipped": tr.skipped_samples()})
            bar.set_postfix(loss=f"{flat['loss/total']:.3f}", psnr=f"{flat.get('psnr', float('nan')):.1f}")
        if world.is_main and cfg.image_every and tr.step % cfg.image_every == 0:
            grid = reconstruction_grid(micro[-1]["image"], last.reconstruction)
            save_grid(grid, run_dir / "images" / f"step_{tr.step:08d}.png", upscale=2)
        if cfg.eval_every and tr.step % cfg.eval_every == 0 and tr.step < tr.total_steps:
            logger.log(tr.step, {"eval": tr.evaluate()})
        if tr.save_due(tr.step):
            _save(tr, run_dir, world, hooks)
    bar.close()
    if not tr.save_due(tr.step):
        _save(tr, run_dir, world, hooks)
    summary = {}
    identical = dist_utils.same_across_ranks(tr.model)  # DDP + all-reduced codebooks keep the ranks equal
    skipped = tr.skipped_samples()  # a collective: every rank takes part
    if world.is_main:
        check_finite_weights(tr.model, tr.step)
        tr.model.save_pretrained(run_dir / "model")
        summary = {**tr.final_summary(skipped), "world_size": world.world_size, "ranks_identical": identical}
        record = teacher_record(cfg.teacher)
        if record is not None:
            summary["teacher_fingerprint"] = record["fingerprint"]
        if summary.get("eval"):
            logger.log(tr.step, {"eval": summary["eval"]})
        write_summary(run_dir, summary)
    logger.close()
    dist_utils.barrier()
    dist_utils.teardown()
    return summary


def _save(tr: Trainer, run_dir: Path, world, hooks: RunHooks) -> None:
    """Rank 0 writes the checkpoint atomically; the others wait so nobody runs ahead of a half-written one."""
    if world.is_main:
        check_finite_weights(tr.model, tr.step)
        save_checkpoint(run_dir / "checkpoints", tr.step, tr.model, tr.state_dict(), keep=tr.cfg.keep_checkpoints,
                        before_commit=lambda: hooks.call("before_checkpoint_commit", tr.step))
    dist_utils.barrier()


def main(argv: list[str] | None = None, hooks: RunHooks | None = None) -> None:
    cfg, given = parse_command_line(sys.argv[1:] if argv is None else argv)
    try:
        summary = run(cfg, hooks, given)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    if summary:
        print(json.dumps(summary.get("eval", summary), indent=2))
        if not summary.get("already_finished"):
            print(f"wrote {cfg.out}/ (model/, checkpoints/, images/, metrics.jsonl, summary.json)")


if __name__ == "__main__":
    main()
