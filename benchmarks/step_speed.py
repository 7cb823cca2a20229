"""How much faster one training step is with each speed lever of ``TrainConfig``, as a ratio to today's step.

The step is the one ``training.loop`` takes: ``tokenizer_micro_step`` (forward, every loss, backward) +
``optimizer_step`` (AdamW + schedule) + ``model.update_codebooks()`` (the EMA update), at the "matched config"
(the original release's model built small): ViT width 192, 6 blocks, 3 heads, patch 8, 64 px; taps pixel 2 / shortcut 1 / semantic 5; code dim
32, depth 4, K 1,024 on both branches; decoder base 32, multipliers (2, 2, 1, 1), 2 + 1 ResBlocks per level,
128 input channels; batch 16; MSE + commitments + distillation from a frozen copy of the tower (no LPIPS, no GAN).

Every row is its own trainer, built with the trainer's own code from the same seed; the first row turns every
lever off, which is the step as it was before the levers existed. Rows are timed in interleaved rounds in this
one process (the machine is shared and noisy: only ratios measured side by side mean anything), each round
taking the median of ``--steps`` steps per row, and the table gives the median over rounds. Each row trains on
its own fixed batch (data loading is not part of the step). Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_speed.py                 # 1 and 2 threads, ~6 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_speed.py --compile       # + torch.compile rows (+ minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.setup import build_trainer

MATCHED = [
    "--model.backbone.width", "192", "--model.backbone.heads", "3", "--model.backbone.layers", "6",
    "--model.backbone.patch_size", "8", "--model.backbone.image_size", "64",
    "--model.pixel_layer", "2", "--model.shortcut_layer", "1", "--model.semantic_layer", "5",
    "--model.pixel_quantizer.code_dim", "32", "--model.pixel_quantizer.depth", "4",
    "--model.pixel_quantizer.codebook_size", "1024",
    "--model.semantic_quantizer.code_dim", "32", "--model.semantic_quantizer.depth", "4",
    "--model.semantic_quantizer.codebook_size", "1024",
    "--model.decoder_channels", "32", "--model.decoder_channel_mult", "2,2,1,1", "--model.decoder_res_blocks", "2",
    "--model.decoder_in_channels", "128", "--batch_size", "16", "--teacher", "backbone",
    "--loss.perceptual_weight", "0", "--train-data", "data/tinyworld/eval-0000.tar", "--eval-data", "none",
    "--out", "/tmp/dualtoken_step_speed",
]
ALL_OFF = {"fast_group_norm": "false", "fused_adamw": "false", "compile_decoder": "false", "bf16": "false"}
EXACT = {"fast_group_norm": "true", "fused_adamw": "true"}  # the levers that change no result


def rows(with_compile: bool) -> dict[str, dict[str, str]]:
    """Row label -> the lever settings on top of ALL_OFF."""
    table = {
        "today's step (baseline)": {},
        "fast_group_norm": {"fast_group_norm": "true"},
        "fused_adamw": {"fused_adamw": "true"},
        "bf16 (numerics change)": {"bf16": "true"},
        "exact levers (the defaults)": EXACT,
        "exact levers + bf16": {**EXACT, "bf16": "true"},
    }
    if with_compile:
        table["compile_decoder"] = {"compile_decoder": "true"}
        table["exact levers + compile_decoder"] = {**EXACT, "compile_decoder": "true"}
        table["exact levers + compile + bf16"] = {**EXACT, "compile_decoder": "true", "bf16": "true"}
    return table


def build_step(levers: dict[str, str]):
    """A trainer at the matched config with these levers; returns a function that takes one full step."""
    argv = list(MATCHED)
    for name, value in {**ALL_OFF, **levers}.items():
        argv += [f"--{name}", value]
    tr = build_trainer(parse_args(argv), dist_utils.setup("cpu"))
    batch = next(tr.batches())  # (B, 3, 64, 64): the same batch every step

    def step() -> None:
        tr.tokenizer_micro_step(tr.model, batch, scale=1.0)
        tr.optimizer_step()
        tr.model.update_codebooks()

    return step


def timed(step, n: int) -> float:
    """Median seconds of n steps."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, measured in turn")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per thread count")
    p.add_argument("--steps", type=int, default=3, help="steps per row per round (their median is the round's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row before each thread count")
    p.add_argument("--compile", action="store_true", help="add the torch.compile rows (compiling takes minutes)")
    args = p.parse_args()
    table = rows(args.compile)
    torch.set_num_threads(1)
    steps, first = {}, {}
    for label, levers in table.items():
        torch.manual_seed(0)
        steps[label] = build_step(levers)
        t0 = time.perf_counter()
        steps[label]()  # the first step compiles, when a row compiles
        first[label] = time.perf_counter() - t0
        print(f"built {label}: first step {first[label]:.1f} s", flush=True)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        load_before = os.getloadavg()
        per_round: dict[str, list[float]] = {label: [] for label in table}
        for r in range(args.rounds):
            for label, step in steps.items():
                per_round[label].append(timed(step, args.steps))
            print(f"  threads {threads} round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{v[-1] * 1e3:.0f}" for v in per_round.values()) + " ms", flush=True)
        load_after = os.getloadavg()
        base = statistics.median(per_round["today's step (baseline)"])
        print(f"\n{threads} thread(s), matched config, batch 16: median over {args.rounds} interleaved rounds of "
              f"the median of {args.steps} steps; load average (1, 5, 15 min) before "
              f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}\n")
        print("| row | ms / step | min-max over rounds | speed vs baseline | median of per-round ratios | first step s |"
              "\n|---|---:|---:|---:|---:|---:|")
        for label, times in per_round.items():
            med = statistics.median(times)
            ratios = [b / t for b, t in zip(per_round["today's step (baseline)"], times)]  # same round, side by side
            print(f"| {label} | {med * 1e3:.0f} | {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} | "
                  f"{base / med:.2f}x | {statistics.median(ratios):.2f}x | {first[label]:.1f} |")
        print(flush=True)


if __name__ == "__main__":
    main()
