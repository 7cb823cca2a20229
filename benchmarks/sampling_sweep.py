"""Sweep a trained generator's sampling settings: teacher accuracy and Frechet distance for each.

    OMP_NUM_THREADS=1 python benchmarks/sampling_sweep.py data/unified/generator-both --num 512 \
        --settings t1 t0.9 t0.8 k64 g1.5 g2 t0.9,g1.5

A setting is comma-joined parts: ``tX`` temperature X, ``kN`` top-k N, ``gS`` guidance S (unset parts keep
SamplingConfig's defaults). Every setting draws the same classes (num / 8 per class) with sampling seed 0 and is
judged against held-out eval images 0..1023, as train_generator's final measurement is. One JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.unified.generator_training import measure_generator
from dualtoken_lite.unified.judge import Judge, held_out_images
from dualtoken_lite.unified.prompts import SamplingConfig
from dualtoken_lite.unified.weights import load_model


def parse_setting(text: str) -> SamplingConfig:
    """"t0.9,k64,g1.5" -> SamplingConfig(temperature=0.9, top_k=64, guidance=1.5)."""
    cfg = SamplingConfig()
    for part in text.split(","):
        key, value = part[0], part[1:]
        if key == "t":
            cfg.temperature = float(value)
        elif key == "k":
            cfg.top_k = int(value)
        elif key == "g":
            cfg.guidance = float(value)
        else:
            raise SystemExit(f"setting part {part!r}: use tX (temperature), kN (top-k) or gS (guidance)")
    return cfg.validate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a generator folder (data/unified/generator-both or RUN/model)")
    parser.add_argument("--settings", nargs="+", default=["t1"])
    parser.add_argument("--num", type=int, default=512, help="images per setting (a multiple of 8)")
    parser.add_argument("--tokenizer", default=str(UNIFIED_TOKENIZER_DIR))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    generator = load_model(args.model, kind="generator")
    tokenizer = DualToken.from_pretrained(args.tokenizer).eval()
    judge = Judge(held_out_images(0, 1024)[0])
    for text in args.settings:
        start = time.time()
        report = measure_generator(generator, tokenizer, judge, args.num, parse_setting(text))
        print(json.dumps({"model": args.model, "setting": text, "teacher_accuracy": round(report["teacher_accuracy"], 4),
                          "frechet": round(report["frechet"], 3), "count": report["count"],
                          "seconds": round(time.time() - start, 1), "load": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
