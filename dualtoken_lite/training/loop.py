"""Train DualToken: `python -m dualtoken_lite.train`, on one CPU or, under torchrun, on many GPUs (docs/method.md §4).

    python -m dualtoken_lite.train --preset tiny                      # the main job: ~10 min on a 2-core CPU
    torchrun --nproc_per_node 8 -m dualtoken_lite.train --preset so400m-384 \\
        --train-data 'cc12m-train-{0000..2175}.tar' --batch-size 32  # the paper's run (DDP, bf16, NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dualtoken_lite.train ...

The original release's flags (--sem_weight, --stage, --name, --train-data, --warmup, --gan_start_epoch, ...) are
accepted with their meanings (training.arguments.RELEASE_FLAGS). One optimizer step = `grad_accum` micro-batches whose
gradients are summed, then one AdamW step, then ONE codebook EMA update (all-reduced across ranks), then one
discriminator step when the GAN is on. A run writes into --out:

    config.json  teacher.json  metrics.jsonl  images/step_*.png  checkpoints/step_*/  summary.json  model/

The folder belongs to one run at a time (training.run_folder: its lock, what a start may do with it). teacher.json
names the tiny-world teacher the run distils from, and a resume with other teacher weights is refused
(training.teacher_record). SIGTERM or Ctrl-C finishes the current step, writes a checkpoint and prints the command
that continues the run (exit 4; a second Ctrl-C stops at once: training.interrupts); NaN or inf in a step stops the
run naming it (exit 3).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from dualtoken_lite.datasets.images import save_image
from dualtoken_lite.datasets.loader import DataError
from dualtoken_lite.quantizers.vector import NonFiniteInput
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import load_run_config, parse_command_line
from dualtoken_lite.training.checkpoints import payload_bytes
from dualtoken_lite.training.config import TrainConfig
from dualtoken_lite.training.logs import MetricsLogger, reconstruction_grid, truncate_metrics
from dualtoken_lite.training.run_folder import NonFiniteError, RunFolder, RunRules
from dualtoken_lite.training.setup import build_trainer
from dualtoken_lite.training.steps import Trainer
from dualtoken_lite.training.teacher_record import TEACHER_RECORD, check_same_teacher, record_text

# What a tokenizer run writes, which settings a resume may change, how many steps a config asks for.
TOKENIZER_RUNS = RunRules(
    command="python -m dualtoken_lite.train",
    files=("config.json", TEACHER_RECORD, "metrics.jsonl", "summary.json", "checkpoints", "images", "model",
           "tensorboard"),
    resumable=("max_steps", "epochs", "log_every", "image_every", "eval_every", "eval_samples", "save_every",
               "keep_checkpoints", "tensorboard", "workers", "threads"),
    load_config=load_run_config,
    total_steps=lambda cfg: cfg.max_steps,
    check_resume=lambda cfg, run_dir: check_same_teacher(run_dir, cfg.teacher),  # the run's own teacher, or none
)


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
        raise NonFiniteError(f"{len(bad)} tensors hold NaN or inf after step {step} (e.g. {bad[:3]})")


def check_finite_losses(losses: dict[str, torch.Tensor], step: int) -> None:
    """Stop every rank together when any rank's loss is NaN or inf (a collective under torchrun)."""
    bad = {k: float(v) for k, v in losses.items() if isinstance(v, torch.Tensor) and not torch.isfinite(v).all()}
    if not dist_utils.all_ok(not bad):
        raise NonFiniteError(f"non-finite loss at step {step}: {bad or 'on another rank'}")


def run(cfg: TrainConfig, hooks: RunHooks | None = None, given: set[str] | None = None) -> dict:
    """Train according to ``cfg`` (already validated) and return the final summary (rank 0).

    ``given``: the fields the command line set, which a resume compares with the run's saved config (None: all).
    """
    with dist_utils.joined(cfg.device) as world, RunFolder(cfg, TOKENIZER_RUNS, world, given) as folder:
        return _train(folder, hooks or RunHooks())


def _train(folder: RunFolder, hooks: RunHooks) -> dict:
    """The loop inside an owned run folder (training.run_folder): steps, checkpoints, a clean stop, the model."""
    cfg, world, plan, run_dir = folder.cfg, folder.world, folder.plan, folder.path
    if plan.action == "finished":
        if world.is_main:
            print(f"{run_dir} holds a finished run (step {plan.summary.get('step')}): nothing to train. Its "
                  f"summary is {run_dir / 'summary.json'}; --max-steps N continues it, --overwrite starts over.",
                  file=sys.stderr)
        return {**plan.summary, "already_finished": True} if world.is_main else {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    records = record_text(cfg.teacher)  # which teacher the run distils from (a missing one is named here)
    tr: Trainer = build_trainer(cfg, world)
    folder.begin(records)  # nothing was written before: a start refused for its data leaves the folder as it was
    find_unused = cfg.model.semantic_layer is None or cfg.stage == 2  # branches without a gradient
    model = DDP(tr.model, find_unused_parameters=find_unused) if world.distributed else tr.model
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, enabled=world.is_main)
    if tr.step and world.is_main:
        truncate_metrics(run_dir, tr.step)
    bar = tqdm(total=tr.total_steps, initial=tr.step, disable=not world.is_main, desc="train", unit="step")
    batches = tr.batches()
    t0, images_seen = time.perf_counter(), 0
    with bar:  # closed before any error line, so that line stands alone
        while tr.step < tr.total_steps:
            micro, losses, last, logs = train_step(tr, model, batches, hooks)
            images_seen += sum(batch["image"].shape[0] for batch in micro) * world.world_size
            bar.update(1)
            hooks.call("after_step", tr.step)
            if tr.step % cfg.log_every == 0 or tr.step == tr.total_steps:
                rate = images_seen / (time.perf_counter() - t0)
                flat = logger.log(tr.step, {**tr.log_terms(losses, last), **logs, "images_per_s": rate,
                                            "data_skipped": tr.skipped_samples()})
                bar.set_postfix(loss=f"{flat['loss/total']:.3f}", psnr=f"{flat.get('psnr', float('nan')):.1f}")
            if world.is_main and cfg.image_every and tr.step % cfg.image_every == 0:
                grid = reconstruction_grid(micro[-1]["image"], last.reconstruction)
                save_image(grid, run_dir / "images" / f"step_{tr.step:08d}.png", upscale=2)
            if cfg.eval_every and tr.step % cfg.eval_every == 0 and tr.step < tr.total_steps:
                logger.log(tr.step, {"eval": tr.evaluate()})
            stop = folder.stop_signal()  # SIGTERM / Ctrl-C on any rank: every rank stops after this same step
            if tr.save_due(tr.step) or stop:
                _save(tr, folder, hooks)
            if stop:
                folder.stop(tr.step, stop)
    if not tr.save_due(tr.step):
        _save(tr, folder, hooks)
    summary = {}
    identical = dist_utils.same_across_ranks(tr.model)  # DDP + all-reduced codebooks keep the ranks equal
    skipped = tr.skipped_samples()  # a collective: every rank takes part
    check_finite_weights(tr.model, tr.step)
    folder.save_model(tr.model.save_pretrained, payload_bytes(tr.model.state_dict()))
    if world.is_main:
        summary = {**tr.final_summary(skipped), "world_size": world.world_size, "ranks_identical": identical}
        if records:
            summary["teacher_fingerprint"] = json.loads(records[TEACHER_RECORD])["fingerprint"]
        if summary.get("eval"):
            logger.log(tr.step, {"eval": summary["eval"]})
    folder.write_summary(summary)
    logger.close()
    return summary


def train_step(tr: Trainer, model, batches, hooks: RunHooks) -> tuple[list[dict], dict, object, dict]:
    """One optimizer step: ``grad_accum`` micro-batches, every rank's losses checked finite, AdamW, one codebook
    update, one discriminator step when the GAN is on. Returns (micro-batches, mean losses, the last model output,
    the codebook and discriminator figures)."""
    step, world = tr.step, tr.world
    tr.refresh_discriminator()
    micro, failure = [], None
    try:
        micro = [next(batches) for _ in range(tr.cfg.grad_accum)]
    except DataError as err:
        failure = err
    if not dist_utils.all_ok(failure is None):  # one rank out of data stops them all, none hangs
        raise failure or DataError(f"another rank ran out of training data at step {step + 1}")
    losses, last = {}, None
    for i, batch in enumerate(micro):
        sync = contextlib.nullcontext() if (i == len(micro) - 1 or not world.distributed) else model.no_sync()
        with sync:
            try:
                terms, last = tr.tokenizer_micro_step(model, batch, scale=1.0 / tr.cfg.grad_accum)
            except NonFiniteInput as err:  # the weights diverged: the quantizer received NaN / inf features
                raise NonFiniteError(f"non-finite values at step {step + 1}: the quantizer's {err}") from None
        for k, v in terms.items():
            losses[k] = losses.get(k, 0.0) + v.detach() / tr.cfg.grad_accum
    hooks.call("after_losses", step + 1, losses)
    check_finite_losses(losses, step + 1)
    tr.optimizer_step()
    codebook_log = tr.model.update_codebooks()
    disc_log = tr.discriminator_step() if tr.gan_on(step) else {}
    tr.step += 1
    return micro, losses, last, {"codebook": codebook_log, **disc_log}


def _save(tr: Trainer, folder: RunFolder, hooks: RunHooks) -> None:
    """A checkpoint of the current step, written atomically by rank 0 from finite weights only."""
    check_finite_weights(tr.model, tr.step)  # on every rank: their weights are equal, so they stop together
    folder.save_checkpoint(tr.step, tr.model, tr.state_dict(), keep=tr.cfg.keep_checkpoints,
                           before_commit=lambda: hooks.call("before_checkpoint_commit", tr.step))


def main(argv: list[str] | None = None, hooks: RunHooks | None = None) -> None:
    cfg, given = parse_command_line(sys.argv[1:] if argv is None else argv)
    summary = run(cfg, hooks, given)
    if summary:
        print(json.dumps(summary.get("eval", summary), indent=2))
        if not summary.get("already_finished"):
            print(f"wrote {cfg.out}/ (model/, checkpoints/, images/, metrics.jsonl, summary.json)")


if __name__ == "__main__":
    main()
