"""How much faster one training step is with the speed levers of ``TrainConfig`` on, at equal precision.

The step is the one ``training.loop`` takes: ``tokenizer_micro_step`` (forward, every loss, backward) +
``optimizer_step`` (AdamW + schedule) + ``model.update_codebooks()`` (the EMA update), at the "matched config"
(the original release's model built small): ViT width 192, 6 blocks, 3 heads, patch 8, 64 px; taps pixel 2 /
shortcut 1 / semantic 5; code dim 32, depth 4, K 1,024 on both branches; decoder base 32, multipliers (2, 2, 1, 1),
2 + 1 ResBlocks per level, 128 input channels; batch 16; MSE + commitments + distillation from a frozen copy of
the tower (no LPIPS, no GAN).

Rows, for each precision (fp32, and bf16 autocast): "levers off", the step with every lever off (the baseline,
frozen: ``ALL_OFF`` names every lever, and a new lever joins it), and "levers on", ``TrainConfig``'s defaults;
``--each`` adds each lever alone, ``--compile`` the opt-in torch.compile lever. Every ratio compares rows of the
SAME precision: bf16 against fp32 would be a change of numerics, not a faster step.

Every row is its own worker process (process-wide levers such as ``keep_freed_memory`` stay with their row),
built with the trainer's own code from the same seed, training on its own fixed batch (data loading is not part of
the step; no lever reuses work across steps). The driver times the rows in interleaved rounds, each round the
median of ``--steps`` steps per row, one thread count after the other; the table gives the median over rounds and
the median of the per-round ratios (the machine is shared and noisy: only ratios measured side by side mean
anything). Run from the repository root, on a quiet machine:

    .venv/bin/python benchmarks/step_speed.py                 # fp32 and bf16, 1 and 2 threads, ~2 min
    .venv/bin/python benchmarks/step_speed.py --each          # + one row per lever
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

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
# Every speed lever, off: the frozen baseline. A new TrainConfig lever is added here (off) and to DEFAULT_ON.
ALL_OFF = {"fast_group_norm": "false", "fused_adamw": "false", "onednn_linear": "false",
           "keep_freed_memory": "false", "compile_decoder": "false"}
DEFAULT_ON = {"fast_group_norm": "true", "fused_adamw": "true", "onednn_linear": "true",
              "keep_freed_memory": "true"}  # TrainConfig's defaults
PRECISIONS = {"fp32": "false", "bf16": "true"}  # row prefix -> --bf16


def rows(each: bool, with_compile: bool) -> dict[str, dict[str, str]]:
    """Row label -> the trainer flags on top of ALL_OFF; labels start with the precision they run in."""
    from dualtoken_lite.training.precision import native_bf16

    table = {}
    for precision, bf16 in PRECISIONS.items():
        if bf16 == "true" and not native_bf16("cpu"):  # the trainer would compute these rows in fp32
            print("no bf16 rows: this CPU has no bf16 kernels (AVX-512 or AMX); the trainer computes in fp32 here")
            continue
        table[f"{precision} levers off"] = {"bf16": bf16}
        if each:
            for lever in DEFAULT_ON:
                table[f"{precision} {lever} alone"] = {"bf16": bf16, lever: "true"}
        table[f"{precision} levers on"] = {"bf16": bf16, **DEFAULT_ON}
        if with_compile:
            table[f"{precision} levers on + compile_decoder"] = {"bf16": bf16, **DEFAULT_ON, "compile_decoder": "true"}
    return table


def worker(flags: dict[str, str]) -> None:
    """Build one row's trainer, then answer "threads steps" lines on stdin with the seconds of each step (JSON)."""
    import torch

    from dualtoken_lite.training import distributed as dist_utils
    from dualtoken_lite.training.arguments import parse_args
    from dualtoken_lite.training.setup import build_trainer

    argv = list(MATCHED)
    for name, value in {**ALL_OFF, **flags}.items():
        argv += [f"--{name}", value]
    torch.manual_seed(0)
    tr = build_trainer(parse_args(argv), dist_utils.setup("cpu"))
    batch = next(tr.batches())  # (B, 3, 64, 64): the same batch every step

    def step() -> None:
        tr.tokenizer_micro_step(tr.model, batch, scale=1.0)
        tr.optimizer_step()
        tr.model.update_codebooks()

    serve(step)


def serve(step) -> None:
    """The worker side of the protocol: print the first step's seconds, then time steps on request until EOF."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    step()  # the first step compiles, when a row compiles
    print(json.dumps({"first_step_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        threads, steps = (int(v) for v in line.split())
        torch.set_num_threads(threads)
        seconds = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - t0)
        print(json.dumps(seconds), flush=True)


class Row:
    """A worker process running one row's step."""

    def __init__(self, label: str, command: list[str], max_threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(max_threads))
        self.label = label
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.first_step_s = json.loads(self.read())["first_step_s"]

    def read(self) -> str:
        """The worker's next JSON line (other output, e.g. library warnings, goes to stderr or is skipped)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"row {self.label!r}: the worker exited (code {self.proc.wait()})")
            if line.startswith(("{", "[")):
                return line

    def steps(self, threads: int, n: int) -> list[float]:
        """Seconds of each of n steps on ``threads`` threads."""
        self.proc.stdin.write(f"{threads} {n}\n")
        self.proc.stdin.flush()
        return json.loads(self.read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def time_rows(commands: dict[str, list[str]], threads: list[int], rounds: int, steps: int, warmup: int) -> dict:
    """{threads: {label: [median seconds of each round]}} plus first-step seconds, rows started one at a time."""
    live = {}
    try:
        for label, command in commands.items():
            live[label] = Row(label, command, max(threads))
            print(f"built {label}: first step {live[label].first_step_s:.1f} s", flush=True)
        result = {"first_step_s": {label: row.first_step_s for label, row in live.items()}}
        for n in threads:
            for row in live.values():
                row.steps(n, warmup)
            load_before = os.getloadavg()
            per_round: dict[str, list[float]] = {label: [] for label in live}
            for r in range(rounds):
                for label, row in live.items():
                    per_round[label].append(statistics.median(row.steps(n, steps)))
                print(f"  threads {n} round {r + 1}/{rounds}: "
                      + ", ".join(f"{v[-1] * 1e3:.0f}" for v in per_round.values()) + " ms", flush=True)
            result[n] = {"rounds": per_round, "load": (load_before, os.getloadavg())}
        return result
    finally:
        for row in live.values():
            row.close()


def print_table(result: dict, baseline_of, rounds: int, steps: int) -> None:
    """One markdown table per thread count; ``baseline_of(label)`` names the row each row is compared with."""
    for n, figures in result.items():
        if n == "first_step_s":
            continue
        per_round, (before, after) = figures["rounds"], figures["load"]
        print(f"\n{n} thread(s), matched config, batch 16: median over {rounds} interleaved rounds of the median of "
              f"{steps} steps; load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in before)}, after "
              f"{', '.join(f'{x:.2f}' for x in after)}\n")
        print("| row | ms / step | min-max over rounds | vs | speed-up | median of per-round ratios | first step s |\n"
              "|---|---:|---:|---|---:|---:|---:|")
        for label, times in per_round.items():
            base = baseline_of(label)
            ratios = [b / t for b, t in zip(per_round[base], times)]  # same round, side by side
            print(f"| {label} | {statistics.median(times) * 1e3:.0f} | {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} | "
                  f"{base} | {statistics.median(per_round[base]) / statistics.median(times):.2f}x | "
                  f"{statistics.median(ratios):.2f}x | {result['first_step_s'][label]:.1f} |")
    print(flush=True)


def same_precision_baseline(label: str) -> str:
    """The levers-off row of a row's precision ("bf16 levers on" -> "bf16 levers off")."""
    return f"{label.split()[0]} levers off"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, measured in turn")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per thread count")
    p.add_argument("--steps", type=int, default=3, help="steps per row per round (their median is the round's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row before each thread count")
    p.add_argument("--each", action="store_true", help="add one row per lever (that lever alone on)")
    p.add_argument("--compile", action="store_true", help="add the torch.compile rows (compiling takes minutes)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one row (JSON flags), answer on stdin/stdout
    args = p.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    commands = {label: [sys.executable, __file__, "--worker", json.dumps(flags)]
                for label, flags in rows(args.each, args.compile).items()}
    threads = [int(t) for t in args.threads.split(",")]
    result = time_rows(commands, threads, args.rounds, args.steps, args.warmup)
    print_table(result, same_precision_baseline, args.rounds, args.steps)


if __name__ == "__main__":
    main()
