"""Where the time of one training step goes, on the CPU: the main job's step, or the matched config's.

Builds the model with the trainer's own code, runs a few warm-up steps, then profiles ``--steps`` steps with
torch.profiler and prints (1) the wall time per step split into the forward of each model stage (the frozen
teacher's included), the backward and the optimizer + codebook update, and (2) the operators that take the most
time. ``--config tiny`` is the main job (tiny preset, shipped teacher, fresh batches in its data order);
``--config matched`` is ``benchmarks/step_speed.py``'s config. Any further arguments are training flags
(``--bf16 false``, ``--compile_decoder true``, ...). Run:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_step.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py --config matched --bf16 false
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch
from step_speed import MATCHED  # benchmarks/step_speed.py, beside this file
from torch.profiler import ProfilerActivity, profile, record_function

from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training import steps as training_steps
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.setup import build_trainer


def instrument(model) -> None:
    """Wrap the forward of each stage of the model in a named profiler range."""
    stages = [("encoder blocks", model.encoder, "run_blocks"), ("encoder embed + pool", model.encoder, "embed"),
              ("encoder embed + pool", model.encoder, "pool"), ("post-quant block", model.post_quant_block, "forward"),
              ("decoder", model.decoder, "forward")]
    for attr in ("pixel_proj", "shortcut_proj", "semantic_proj", "pixel_post_proj", "semantic_post_proj"):
        if getattr(model, attr, None) is not None:
            stages.append(("attn projections", getattr(model, attr), "forward"))
    for attr in ("pixel_quantizer", "semantic_quantizer"):
        if getattr(model, attr, None) is not None:
            stages.append(("quantizers", getattr(model, attr), "forward"))
    stages.append(("teacher (no grad)", training_steps, "targets_from_teacher"))
    for name, obj, method in stages:
        original = getattr(obj, method)

        def wrapped(*args, _f=original, _n=name, **kwargs):
            with record_function(f"stage: {_n}"):
                return _f(*args, **kwargs)

        setattr(obj, method, wrapped)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--config", choices=("tiny", "matched"), default="tiny",
                   help="tiny: the main job's step; matched: benchmarks/step_speed.py's config (batch 16)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (tiny), 16 (matched)")
    args, flags = p.parse_known_args()
    if args.config == "matched":
        argv = list(MATCHED)
    else:
        argv = ["--preset", "tiny", "--train-data", "data/tinyworld/eval-0000.tar", "--eval-data", "none",
                "--out", "/tmp/dualtoken_profile"]
    args.batch_size = args.batch_size or (16 if args.config == "matched" else 32)
    cfg = parse_args(argv + ["--batch_size", str(args.batch_size), *flags])
    tr = build_trainer(cfg, dist_utils.setup("cpu"))
    instrument(tr.model)
    batches = tr.batches()

    def step() -> None:
        with record_function("step: forward + loss + backward"):
            tr.tokenizer_micro_step(tr.model, next(batches), scale=1.0)
        with record_function("step: optimizer + codebook update"):
            tr.optimizer_step()
            tr.model.update_codebooks()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - t0) / args.steps
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith(("stage: ", "step: ")):
            totals[event.key] += event.cpu_time_total / 1e6 / args.steps
    print(f"{args.config} config, bf16 {tr.autocast}, flags {' '.join(flags) or '(none)'}\n"
          f"threads {torch.get_num_threads()}, batch {args.batch_size}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}: {wall:.3f} s per step (profiled), "
          f"{args.batch_size / wall:.1f} images/s\n")
    print("| range | s / step | share of step |\n|---|---:|---:|")
    for key, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {seconds:.3f} | {seconds / wall:.0%} |")
    print("\n(stage rows are forward only; the backward of all stages is inside 'forward + loss + backward')\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
