"""Training-step speed of the unified generator under the CPU kernel choices, as ratios against fp32.

    OMP_NUM_THREADS=1 python benchmarks/generator_step_speed.py [--steps 30] [--variant both]

One training step = ``ARGenerator.loss`` forward + backward + AdamW at the trainer's default model and batch, on
random codes (the speed does not depend on their values). Modes, interleaved in rounds so that drifting machine
load hits them alike: ``fp32`` (the default kernels: the CPU flash-attention kernel), ``fp32-math`` (the plain
attention kernel), ``bf16`` (bf16 autocast with the plain attention kernel: unified/fit.py's ``loop.bf16``,
training/precision.py).
Prints the median seconds per step of each mode and its speed-up over fp32, with the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.training.precision import precision_context
from dualtoken_lite.unified.ar_generator import ARGenerator
from dualtoken_lite.unified.embedding import slot_offsets, slot_sizes
from dualtoken_lite.unified.generator_training import GeneratorTrainConfig
from dualtoken_lite.unified.token_cache import layout_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", default="both")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    lay = layout_of(DualToken.from_pretrained(UNIFIED_TOKENIZER_DIR))  # the shipped tokenizer's token layout
    model = ARGenerator(dataclasses.replace(GeneratorTrainConfig().model, variant=args.variant), lay)  # the trainer's
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stacks = torch.randint(0, 512, (args.batch, lay.grid**2, lay.pixel_depth + lay.semantic_depth))
    stacks = stacks % torch.tensor(slot_sizes(lay)) + slot_offsets(lay)  # (B, N, S) valid ids of every slot
    classes = torch.randint(0, 8, (args.batch,))
    modes = {"fp32": (False, False), "fp32-math": (False, True), "bf16": (True, True)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, (bf16, math) in modes.items():
            for i in range(args.steps + 3):
                start = time.perf_counter()
                with precision_context("cpu", bf16, math):
                    loss, _ = model.loss(stacks, classes)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if i >= 3:  # the first steps of a mode warm its kernels up
                    times[mode].append(time.perf_counter() - start)
    base = statistics.median(times["fp32"])
    for mode, t in times.items():
        print(json.dumps({"mode": mode, "seconds_per_step": round(statistics.median(t), 4),
                          "speedup_vs_fp32": round(base / statistics.median(t), 3),
                          "images_per_s": round(args.batch / statistics.median(t), 1),
                          "threads": torch.get_num_threads(), "load": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
