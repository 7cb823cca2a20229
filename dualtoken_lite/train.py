"""Train DualToken: `python -m dualtoken_lite.train`, on one CPU or, under torchrun, on many GPUs (SPEC §4).

    python -m dualtoken_lite.train --preset tiny                      # the main job: ~10 min on a 2-core CPU
    torchrun --nproc_per_node 8 -m dualtoken_lite.train --preset so400m-384 \\
        --train-data 'cc12m-train-{0000..2175}.tar' --batch-size 32  # the paper's run (DDP, bf16, NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dualtoken_lite.train ...

The original release's flags (--sem_weight, --stage, --name, --train-data, --warmup, --gan_start_epoch, ...) are
accepted with their meanings (train_config.RELEASE_FLAGS). One optimizer step = `grad_accum` micro-batches whose
gradients are summed, then one AdamW step, then ONE codebook EMA update (all-reduced across ranks), then one
discriminator step when the GAN is on. A run writes into --out:

    config.json  metrics.jsonl  images/step_*.png  checkpoints/step_*/  summary.json  model/ (final weights)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from . import distributed as dist_utils
from .config import to_dict
from .evaluation import write_summary
from .run_logging import MetricsLogger, reconstruction_grid, save_grid, truncate_metrics
from .train_config import TrainConfig, parse_args
from .trainer import Trainer, build_trainer
from .training_state import latest_checkpoint, save_checkpoint

FAULT_ENV = "DUALTOKEN_LITE_FAULT"  # test hook: "kill-after-step:N" / "kill-in-save:N" (SIGKILL), "nan-loss:N"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the run stops and the last good checkpoint stays as it was."""


def _fault(point: str, step: int) -> None:
    """Fault injection for the resume tests: SIGKILL this process at a named point of step ``step``."""
    if os.environ.get(FAULT_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    bad = {k: float(v) for k, v in losses.items() if isinstance(v, torch.Tensor) and not torch.isfinite(v).all()}
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {bad}. Stopped without saving; the last good checkpoint is intact "
            "(lower --lr, check the data, or resume from it with --resume)"
        )


def run(cfg: TrainConfig) -> dict:
    """Train according to ``cfg`` (already validated) and return the final summary (rank 0)."""
    world = dist_utils.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    tr: Trainer = build_trainer(cfg, world)
    model = DDP(tr.model, find_unused_parameters=tr.find_unused) if world.distributed else tr.model
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, enabled=world.is_main)
    if tr.step and world.is_main:
        truncate_metrics(run_dir, tr.step)
    bar = tqdm(total=tr.total_steps, initial=tr.step, disable=not world.is_main, desc="train", unit="step")
    batches = tr.batches()
    t0, images_seen = time.perf_counter(), 0
    while tr.step < tr.total_steps:
        step = tr.step
        tr.maybe_new_discriminator()
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        losses, last = {}, None
        for i, batch in enumerate(micro):
            sync = contextlib.nullcontext() if (i == len(micro) - 1 or not world.distributed) else model.no_sync()
            with sync:
                terms, last = tr.generator_micro_step(model, batch, scale=1.0 / cfg.grad_accum)
            for k, v in terms.items():
                losses[k] = losses.get(k, 0.0) + v.detach() / cfg.grad_accum
            images_seen += batch["image"].shape[0] * world.world_size
        if os.environ.get(FAULT_ENV) == f"nan-loss:{step + 1}":
            losses["total"] = losses["total"] * float("nan")
        _check_finite(losses, step + 1)
        tr.optimizer_step()
        codebook_log = tr.model.update_codebooks()
        disc_log = tr.discriminator_step(micro) if tr.gan_on(step) else {}
        tr.step += 1
        bar.update(1)
        _fault("kill-after-step", tr.step)
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
            _save(tr, run_dir, world)
    bar.close()
    if not tr.save_due(tr.step):
        _save(tr, run_dir, world)
    summary = {}
    identical = dist_utils.same_across_ranks(tr.model)  # DDP + all-reduced codebooks keep the ranks equal
    if world.is_main:
        tr.model.save_pretrained(run_dir / "model")
        summary = {**tr.final_summary(), "world_size": world.world_size, "ranks_identical": identical}
        if summary.get("eval"):
            logger.log(tr.step, {"eval": summary["eval"]})
        write_summary(run_dir, summary)
    logger.close()
    dist_utils.barrier()
    dist_utils.teardown()
    return summary


def _save(tr: Trainer, run_dir: Path, world) -> None:
    """Rank 0 writes the checkpoint atomically; the others wait so nobody runs ahead of a half-written one."""
    if world.is_main:
        save_checkpoint(run_dir / "checkpoints", tr.step, tr.model, tr.state_dict(), keep=tr.cfg.keep_checkpoints,
                        before_commit=lambda: _fault("kill-in-save", tr.step))
    dist_utils.barrier()


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.resume == "auto":
        found = latest_checkpoint(Path(cfg.out) / "checkpoints")
        cfg.resume = str(found) if found else None
    try:
        summary = run(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    if summary:
        print(json.dumps(summary.get("eval", summary), indent=2))
        print(f"wrote {cfg.out}/ (model/, checkpoints/, images/, metrics.jsonl, summary.json)")


if __name__ == "__main__":
    main()
