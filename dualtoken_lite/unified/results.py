"""Collect the unified runs into the shipped models and the results table: `python -m dualtoken_lite unified_results`.

    OMP_NUM_THREADS=1 python -m dualtoken_lite unified_results --runs runs/unified --out data/unified

Reads the runs that ``train_reader`` / ``train_generator`` wrote (runs/unified/reader-{variant}-s{seed},
runs/unified/generator-{variant}-s{seed}), copies the seed-0 readers' and generators' float16 model folders to
``--out`` (a few MB; the seed-1 models' figures are kept in the table), measures the ceiling (the teacher's
accuracy and the Frechet distance on the tokenizer's own reconstructions of held-out images eval 1024..2047, from
all pixel depths and from the depths the generators model, and on those originals, against the reference images
eval 0..1023) and each generator's held-out loss (nats per code of eval images 1024..2047, teacher-forced), and
writes ``--out/results.json``: per question accuracy of the three readers for each seed, generation accuracy,
Frechet distance and held-out loss of the two generators, the ceiling, and the command and load average of every
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import MissingFile
from dualtoken_lite.tinyworld.paths import UNIFIED_DIR, UNIFIED_TOKENIZER_DIR
from dualtoken_lite.unified.generator_training import heldout_loss
from dualtoken_lite.unified.judge import Judge, held_out_images, reconstruction_ceiling
from dualtoken_lite.unified.questions import QUESTION_NAMES
from dualtoken_lite.unified.token_cache import load_or_encode
from dualtoken_lite.unified.weights import load_model, read_config

READERS, GENERATORS, SEEDS = ("semantic", "pixel", "both"), ("pixel", "both"), (0, 1)


def read_summary(run: Path) -> dict:
    """A finished run's summary.json, or an error naming the command that makes it."""
    path = run / "summary.json"
    if not path.is_file():
        raise MissingFile(f"{path} not found: train it first (see dualtoken_lite/unified/results.py's docstring)")
    return json.loads(path.read_text())


def collect(runs: Path, out: Path, keep_readers: bool = False) -> dict:
    """Reader and generator figures from the runs; the shipped model folders copied to ``out``.

    ``keep_readers``: take the readers' figures from ``out/results.json`` and leave their shipped models as they are
    (for a change that only retrains the generators; the readers do not depend on them)."""
    table: dict = {"readers": {}, "generators": {}}
    if keep_readers:
        old = out / "results.json"
        if not old.is_file():
            raise MissingFile(f"--keep-readers needs {old} from an earlier run of this command")
        kept = json.loads(old.read_text())
        table["readers"], table["majority_baseline"] = kept["readers"], kept["majority_baseline"]
    for variant in () if keep_readers else READERS:
        rows = {f"seed{s}": read_summary(runs / f"reader-{variant}-s{s}") for s in SEEDS}
        mean = {q: sum(r["accuracy"][q] for r in rows.values()) / len(rows) for q in QUESTION_NAMES}
        table["readers"][variant] = {"mean": mean, **{k: {key: r[key] for key in (
            "accuracy", "command", "train_minutes", "load_average_1_5_15", "parameters")} for k, r in rows.items()}}
        table["majority_baseline"] = rows["seed0"]["majority_baseline"]
        ship(runs / f"reader-{variant}-s0" / "model", out / f"reader-{variant}")
    for variant in GENERATORS:
        rows = {f"seed{s}": read_summary(runs / f"generator-{variant}-s{s}") for s in SEEDS}
        mean = {key: sum(r["generation"][key] for r in rows.values()) / len(rows) for key in ("teacher_accuracy",
                                                                                                "frechet")}
        table["generators"][variant] = {"mean": mean, **{k: {key: r[key] for key in (
            "generation", "command", "train_minutes", "threads", "load_average_1_5_15", "parameters",
            "reference_images")} for k, r in rows.items()}}
        ship(runs / f"generator-{variant}-s0" / "model", out / f"generator-{variant}")
    return table


def add_heldout_loss(table: dict, runs: Path, tokenizer: DualToken, tokenizer_dir: str, cache_dir: str) -> None:
    """Each generator run's held-out loss (nats per modelled code of eval images 1024..2047, teacher-forced;
    generator_training.heldout_loss) into its row: the comparison of the two generators with no sampling noise."""
    held_out = load_or_encode(tokenizer, tokenizer_dir, "eval", 1024, 1024, cache_dir)
    for variant in GENERATORS:
        for s in SEEDS:
            model = load_model(runs / f"generator-{variant}-s{s}" / "model", kind="generator")
            table["generators"][variant][f"seed{s}"]["heldout_loss"] = heldout_loss(model, held_out)


def ship(model: Path, target: Path) -> None:
    """Copy a run's float16 model folder into the shipped folder (replacing an older copy)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model, target)


def measure_ceiling(tokenizer: DualToken, depths: tuple[int, ...] = (), reference_count: int = 1024) -> dict:
    """The reconstruction ceiling (all pixel depths, and the first d for each d in ``depths``) and the real-vs-real
    floor against held-out reference images (unified/judge.py)."""
    start = time.time()
    judge = Judge(held_out_images(0, reference_count)[0])
    result = reconstruction_ceiling(judge, tokenizer, reference_count, reference_count, depths)
    result["reference_images"] = f"eval 0..{reference_count - 1}"
    result["seconds"] = round(time.time() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite unified_results", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/unified", help="folder of the reader-*/generator-* runs")
    parser.add_argument("--out", default=str(UNIFIED_DIR), help="where the shipped models and results.json go")
    parser.add_argument("--tokenizer", default=str(UNIFIED_TOKENIZER_DIR), help="the tokenizer the runs used")
    parser.add_argument("--cache_dir", default="runs/unified/cache", help="the trainers' token caches")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--keep-readers", action="store_true", help="keep the readers' figures and models already in "
                        "--out (only the generators were retrained)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = collect(Path(args.runs), out, args.keep_readers)
    tokenizer = DualToken.from_pretrained(args.tokenizer).eval()  # loaded once for both measurements
    add_heldout_loss(table, Path(args.runs), tokenizer, args.tokenizer, args.cache_dir)
    depths = sorted({read_config(out / f"generator-{v}")["config"]["pixel_depths"] for v in GENERATORS})
    table["ceiling"] = measure_ceiling(tokenizer, tuple(depths))
    table["ceiling"]["command"] = "python -m dualtoken_lite unified_results " + " ".join(argv or [])
    table["ceiling"]["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    (out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    print(format_table(table))
    print(f"wrote {out / 'results.json'} and the shipped models under {out}")
    return 0


def format_table(table: dict) -> str:
    """The results as two markdown tables (understanding; generation with the ceiling)."""
    lines = ["| reader | " + " | ".join(QUESTION_NAMES) + " |", "|---" * (len(QUESTION_NAMES) + 1) + "|"]
    for variant, row in table["readers"].items():
        cells = [" / ".join(f"{100 * row[f'seed{s}']['accuracy'][q]:.1f}" for s in SEEDS) for q in QUESTION_NAMES]
        lines.append(f"| {variant} (seed 0 / 1) | " + " | ".join(cells) + " |")
    base = table["majority_baseline"]
    lines.append("| majority answer | " + " | ".join(f"{100 * base[q]:.1f}" for q in QUESTION_NAMES) + " |")
    lines += ["", "| images | teacher accuracy (%) | Frechet distance | held-out nats per pixel code |",
              "|---|---|---|---|"]
    for variant, row in table["generators"].items():
        runs = [row[f"seed{s}"]["generation"] for s in SEEDS]
        nats = " / ".join(f"{row[f'seed{s}']['heldout_loss']['loss_pixel']:.3f}" for s in SEEDS
                          ) if "heldout_loss" in row["seed0"] else ""
        lines.append(f"| generator {variant} (seed 0 / 1, {runs[0]['count']} samples each) | "
                     + " / ".join(f"{100 * g['teacher_accuracy']:.1f}" for g in runs) + " | "
                     + " / ".join(f"{g['frechet']:.2f}" for g in runs) + f" | {nats} |")
    for name in [k for k in table["ceiling"] if k.startswith("reconstructions")] + ["originals"]:
        c = table["ceiling"][name]
        label = {"reconstructions": "tokenizer reconstructions, all 8 pixel depths", "originals": "the held-out "
                 "originals themselves"}.get(name, f"tokenizer reconstructions, first {name[-1]} pixel depth(s)")
        lines.append(f"| {label} ({c['count']} images) | {100 * c['teacher_accuracy']:.1f} | {c['frechet']:.2f} | |")
    return "\n".join(lines)
