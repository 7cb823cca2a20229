"""The paper's ablation at small scale: one layer for both objectives vs one layer each (docs/method.md §1, §8).

DualToken's claim is that reconstruction and semantics fight when they share a layer and a codebook, and stop
fighting when each gets its own layer. The paper shows it with four tokenizers trained on one budget:

    (a) shared   reconstruction + semantics from the same deep layer, one codebook   rFID 3.86  PSNR 12.6  ZS 72.3
    (b) deep     reconstruction only, from the deep layer                             rFID 0.27  PSNR 27.9
    (c) shallow  reconstruction only, from the shallow layer (+ shortcut)             rFID 0.29  PSNR 28.1
    (d) dual     DualToken: shallow pixel codebook + deep semantic codebook           rFID 0.25  PSNR 28.7  ZS 82.0

Here each variant is the tiny preset with its taps moved (``VARIANTS``), trained by the library's trainer
(``training.loop.run``) for the same number of steps, once per seed, and evaluated on the held-out set:
PSNR and SSIM for all, and, for the two with a semantic branch, the semantic accuracy: zero-shot accuracy of the
pooled embedding computed from the quantized path, through the tiny SigLIP's text tower, averaged over shape,
colour, fill and background (``summary["eval"]["semantic"]`` has each; docs/method.md §6, §9).

    python -m dualtoken_lite ablation --steps 1200 --seeds 0 1 --threads 1 --out runs/ablation   # 8 runs
    python -m dualtoken_lite ablation --steps 2 --seeds 0 --batch_size 4 --teacher backbone   # smoke run

Any other ``--flag value`` goes to every run's trainer (``python -m dualtoken_lite.train --help`` names them);
the variant's model flags come last, so they always win. A run whose ``summary.json`` exists with the same
config is reused, so an interrupted ablation picks up where it stopped. Writes ``OUT/<variant>/seed<k>/``
(each a training run), ``OUT/ablation.json`` and ``OUT/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from dualtoken_lite.settings import ConfigError, to_dict
from dualtoken_lite.training.arguments import load_run_config, parse_args


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: its model flags and the paper's figures for it (docs/method.md §1, §8)."""

    key: str  # short name, also the run folder
    label: str  # what the row is, in words
    flags: tuple[str, ...]  # model overrides on top of the tiny preset (the trainer's --model.<field> flags)
    paper_rfid: float  # the paper's rFID on ImageNet val
    paper_psnr: float  # the paper's PSNR (dB)
    paper_zero_shot: float | None  # the paper's zero-shot top-1 (%); None: no semantic branch


# The tiny tower has 6 blocks: block 5 plays the paper's block 26 (deep). The shallow tap is the tiny preset's:
# the patch embedding (tap 0, no shortcut), where the tiny teacher still keeps colour (docs/tiny_recipe.md); the
# paper's shallow tap is block 6 (+ 0.6 x block 4), where SigLIP still keeps it.
VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("shared", "(a) one deep layer, one codebook, both losses",
            ("--model.pixel_layer", "5", "--model.semantic_layer", "5", "--model.shared_quantizer", "true",
             "--model.shortcut_layer", "none"), 3.86, 12.6, 72.3),
    Variant("deep", "(b) deep layer, reconstruction only",
            ("--model.pixel_layer", "5", "--model.semantic_layer", "none", "--model.shortcut_layer", "none"),
            0.27, 27.9, None),
    Variant("shallow", "(c) shallow layer, reconstruction only",
            ("--model.pixel_layer", "0", "--model.shortcut_layer", "none", "--model.semantic_layer", "none"),
            0.29, 28.1, None),
    Variant("dual", "(d) DualToken: shallow pixel + deep semantic",
            ("--model.pixel_layer", "0", "--model.shortcut_layer", "none", "--model.semantic_layer", "5",
             "--model.shared_quantizer", "false"), 0.25, 28.7, 82.0),
)}
METRICS = ("psnr", "ssim", "semantic_accuracy", "teacher_accuracy")  # read from each run's summary["eval"]
RESERVED = {"--max_steps", "--max-steps", "--seed", "--out", "--name"}  # set per run by the ablation itself
COLUMNS = ("variant", "PSNR (dB)", "SSIM", "semantic acc. (%)", "paper rFID", "paper PSNR", "paper zero-shot (%)")


def run_args(variant: Variant, seed: int, steps: int, out: Path, extra: list[str]) -> list[str]:
    """The trainer's command line for one (variant, seed): shared budget, the caller's flags, then the variant's."""
    budget = ["--max_steps", str(steps), "--seed", str(seed), "--out", str(out / variant.key / f"seed{seed}"),
              "--eval_every", "0", "--save_every", "0", "--keep_checkpoints", "1"]
    return [*budget, *extra, *variant.flags]


def finished_summary(run_dir: Path, cfg) -> dict | None:
    """A finished run's summary when its saved config equals ``cfg`` (so an interrupted ablation resumes)."""
    summary, config = run_dir / "summary.json", run_dir / "config.json"
    if not (summary.is_file() and config.is_file()):
        return None
    if to_dict(load_run_config(config)) != to_dict(cfg):
        return None
    return json.loads(summary.read_text())


def train_one(args: list[str]) -> dict:
    """Train (or reuse) one run and return its held-out figures (summary["eval"])."""
    from dualtoken_lite.training.loop import (
        run,  # here, not at the top: `--help` needs none of the training stack
    )

    cfg = parse_args(args)
    if not cfg.eval_data:
        raise ConfigError("the ablation compares held-out figures: give --eval-data (default tinyworld-eval)")
    cfg.overwrite = True  # a run of the same config is reused above; anything else in its folder is stale
    summary = finished_summary(Path(cfg.out), cfg) or run(cfg)
    return summary["eval"]


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single seed)."""
    n = len(values)
    mean = sum(values) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, spread


def aggregate(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """{variant: {seed: eval}} -> {variant: {metric: {"mean", "std", "values"}, "paper": {...}}}."""
    table = {}
    for key, runs in per_seed.items():
        variant, row = VARIANTS[key], {}
        for metric in METRICS:
            values = [runs[s][metric] for s in sorted(runs) if metric in runs[s]]
            if values:
                mean, std = mean_spread(values)
                row[metric] = {"mean": mean, "std": std, "values": values}
        row["paper"] = {"rfid": variant.paper_rfid, "psnr": variant.paper_psnr, "zero_shot": variant.paper_zero_shot}
        row["label"], row["seeds"] = variant.label, sorted(runs)
        table[key] = row
    return table


def _cell(row: dict, metric: str, scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± std' of a metric, or '-' when the variant has none (no semantic branch)."""
    if metric not in row:
        return "-"
    return f"{row[metric]['mean'] * scale:.{digits}f} ± {row[metric]['std'] * scale:.{digits}f}"


def markdown_table(table: dict[str, dict]) -> str:
    """The ablation as a markdown table: our figures (mean ± std over seeds) beside the paper's."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table.values():
        paper = row["paper"]
        zero_shot = "-" if paper["zero_shot"] is None else f"{paper['zero_shot']:.1f}"
        cells = [row["label"], _cell(row, "psnr"), _cell(row, "ssim", digits=3),
                 _cell(row, "semantic_accuracy", scale=100.0, digits=1),
                 f"{paper['rfid']:.2f}", f"{paper['psnr']:.1f}", zero_shot]
        lines.append("| " + " | ".join(cells) + " |")
    teacher = [row["teacher_accuracy"]["mean"] for row in table.values() if "teacher_accuracy" in row]
    if teacher:
        lines.append("")
        lines.append(f"Teacher accuracy on the same held-out images: {100 * teacher[0]:.1f} %. Ours: tiny world, "
                     "64 px, held-out set; paper: ImageNet-1K val, 384 px (docs/method.md §8). ± = std over seeds.")
    return "\n".join(lines)


def run_ablation(steps: int, seeds: list[int], out: str | Path, extra: list[str] | None = None,
                 variants: list[str] | None = None, log=print) -> dict[str, dict]:
    """Train every (variant, seed) on one budget; write OUT/ablation.json and OUT/ablation.md; return the table."""
    if steps < 1:
        raise ConfigError(f"--steps {steps}: give at least 1 optimizer step per run")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed (two or more to see the spread)")
    keys = variants or list(VARIANTS)
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    fixed = sorted({a.split("=")[0] for a in extra or []} & RESERVED)
    if fixed:
        raise ConfigError(f"{fixed} would break the one budget; the ablation sets them (use --steps / --seeds / --out)")
    out = Path(out)
    per_seed: dict[str, dict[int, dict]] = {}
    for key in keys:
        for seed in seeds:
            log(f"ablation: {VARIANTS[key].label}, seed {seed}, {steps} steps")
            per_seed.setdefault(key, {})[seed] = train_one(run_args(VARIANTS[key], seed, steps, out, extra or []))
    table = aggregate(per_seed)
    out.mkdir(parents=True, exist_ok=True)
    record = {"steps": steps, "seeds": list(seeds), "trainer_flags": extra or [], "variants": table,
              "per_seed": {k: {str(s): v for s, v in runs.items()} for k, runs in per_seed.items()}}
    (out / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown_table(table) + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite ablation", description=__doc__.split("\n")[0],
                                     epilog="Other --flag value pairs are passed to every training run.",
                                     allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps of every run (one budget; the main job's 1,200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one run per seed and variant")
    parser.add_argument("--out", default="runs/ablation", help="folder of the runs, ablation.json and .md")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    table = run_ablation(args.steps, args.seeds, args.out, extra, args.variants)
    print(markdown_table(table))
    print(f"wrote {args.out}/ablation.json and {args.out}/ablation.md")


if __name__ == "__main__":
    main()
