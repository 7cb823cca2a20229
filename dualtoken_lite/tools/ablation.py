"""The paper's ablation at small scale, each comparison changing one factor (docs/method.md §1, §8).

DualToken's claim is that reconstruction and semantics fight when they share one codebook, and stop fighting when
each has its own. The paper shows it with four tokenizers trained on one budget (ImageNet val, 384 px):

    (a) one codebook on the deep layer, both losses            rFID 3.86  PSNR 12.6  zero-shot 72.3
    (b) the deep layer, reconstruction only                    rFID 0.27  PSNR 27.9
    (c) the shallow layer (+ shortcut), reconstruction only    rFID 0.29  PSNR 28.1
    (d) DualToken: shallow pixel codebook + deep semantic one  rFID 0.25  PSNR 28.7  zero-shot 82.0

Read as pairs, (a) vs (d) changes the layer and the number of codebooks at once. Here every compared pair of
variants differs in exactly one setting (``PAIRS``; a test checks it on the variants' configs):

    one codebook vs two at the same (deep) layer         shared        -> two_deep     model.shared_quantizer
    deep vs shallow pixel layer, two codebooks           two_deep      -> dual         model.pixel_layer
    + semantic loss, one codebook       (paper b -> a)   shared_nosem  -> shared       loss.sem_weight
    + semantic loss, two codebooks      (paper c -> d)   dual_nosem    -> dual         loss.sem_weight

``dual`` is the tiny preset itself (the main job's model). Every variant is trained by the library's trainer for
the main job's step count, once per seed, and evaluated on held-out images 0-511: PSNR, chroma PSNR and zero-shot
accuracy per attribute from the semantic codes (docs/method.md §6). A difference **exceeds the seed spread** when
the two variants' ranges over the seeds do not overlap.

    python -m dualtoken_lite ablation --out runs/ablation                  # 5 variants x 3 seeds x 1,200 steps
    python -m dualtoken_lite ablation --part 1/2 & python -m dualtoken_lite ablation --part 2/2   # two at once
    python -m dualtoken_lite ablation --steps 2 --seeds 0 --batch_size 4   # smoke run

Any other ``--flag value`` goes to every run's trainer (``python -m dualtoken_lite.train --help``); the variant's
own flags come last, so they always win. The command is resumable: a finished run with the same config is
reused, an interrupted one continues from its last checkpoint, anything else in a run folder is replaced. It
writes ``OUT/<variant>/seed<k>/`` (each a training run), then, once every run is finished, ``OUT/ablation.json``
and ``OUT/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dualtoken_lite.model.config import model_preset
from dualtoken_lite.settings import ConfigError, atomic_write_text, to_dict
from dualtoken_lite.training.arguments import load_run_config, parse_args
from dualtoken_lite.training.config import TrainConfig

TINY = model_preset("tiny")
SHALLOW, DEEP = TINY.pixel_layer, TINY.semantic_layer  # the tiny preset's taps (paper: block 6 and 26 of 27)
STEPS = TrainConfig().max_steps  # the main job's step count: every run of the ablation gets the same budget
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's ablation table (ImageNet-1K val, 384 px)."""

    name: str  # "(a)" .. "(d)"
    label: str  # what the paper trained
    rfid: float
    psnr: float  # dB
    zero_shot: float | None  # top-1 (%); None: no semantic branch


PAPER = {r.name: r for r in (
    PaperRow("(a)", "one codebook on the deep layer, both losses", 3.86, 12.6, 72.3),
    PaperRow("(b)", "the deep layer, reconstruction only", 0.27, 27.9, None),
    PaperRow("(c)", "the shallow layer (+ shortcut), reconstruction only", 0.29, 28.1, None),
    PaperRow("(d)", "DualToken: shallow pixel + deep semantic codebook", 0.25, 28.7, 82.0),
)}


@dataclass(frozen=True)
class Variant:
    """One tokenizer of the ablation: its trainer flags on top of the tiny preset, and its paper counterpart."""

    key: str  # short name, also the run folder
    label: str  # what the variant is, in words
    flags: tuple[str, ...]  # trainer overrides (--model.<field> / --loss.<field>)
    paper: str | None  # the paper's row it corresponds to, None where the paper has none


def _taps(pixel: int, shared: bool, sem_weight: float) -> tuple[str, ...]:
    """The flags that place the pixel tap, share (or not) the codebook and weigh the semantic loss."""
    return ("--model.pixel_layer", str(pixel), "--model.semantic_layer", str(DEEP),
            "--model.shared_quantizer", str(shared).lower(), "--loss.sem_weight", str(sem_weight))


VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("shared", f"one codebook on block {DEEP}, both losses", _taps(DEEP, True, 1.0), "(a)"),
    Variant("shared_nosem", f"one codebook on block {DEEP}, reconstruction only", _taps(DEEP, True, 0.0), "(b)"),
    Variant("two_deep", f"two codebooks, both on block {DEEP}, both losses", _taps(DEEP, False, 1.0), None),
    Variant("dual", f"DualToken: pixel codebook on block {SHALLOW}, semantic on block {DEEP}",
            _taps(SHALLOW, False, 1.0), "(d)"),
    Variant("dual_nosem", f"pixel codebook on block {SHALLOW}, semantic on block {DEEP}, reconstruction only",
            _taps(SHALLOW, False, 0.0), "(c)"),
)}


@dataclass(frozen=True)
class Pair:
    """Two variants that differ in exactly one setting; the difference reported is ``to`` minus ``start``."""

    question: str  # what the pair asks
    field: str  # the one config field (dotted) in which the two differ
    start: str  # variant key
    to: str  # variant key


PAIRS = (
    Pair("one codebook -> two, same deep layer", "model.shared_quantizer", "shared", "two_deep"),
    Pair("deep -> shallow pixel layer, two codebooks", "model.pixel_layer", "two_deep", "dual"),
    Pair("+ semantic loss, one codebook", "loss.sem_weight", "shared_nosem", "shared"),
    Pair("+ semantic loss, two codebooks", "loss.sem_weight", "dual_nosem", "dual"),
)
RESERVED = {"--max_steps", "--max-steps", "--seed", "--out", "--name", "--resume", "--overwrite"}  # set per run here
IGNORED = ("resume", "overwrite", "threads", "workers", "tensorboard")  # may differ between a run and its reuse
TIMING_FILE = "ablation_seconds.json"  # in each run folder: training seconds, summed over interrupted starts


def run_args(variant: Variant, seed: int, steps: int, out: Path, extra: list[str]) -> list[str]:
    """The trainer's command line for one (variant, seed): the one budget, the caller's flags, then the variant's."""
    every = max(1, steps // 12)  # a checkpoint every twelfth of the run (100 steps of 1,200): a kill loses little
    budget = ["--max_steps", str(steps), "--seed", str(seed), "--out", str(out / variant.key / f"seed{seed}"),
              "--eval_every", "0", "--save_every", str(every), "--keep_checkpoints", "1", "--image_every", "0"]
    return [*budget, *extra, *variant.flags]


def same_run(cfg: TrainConfig, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds the run ``cfg`` asks for (its saved config equals ``cfg`` up to settings that change
    no figure); False when it holds none, or a config this version cannot read."""
    try:
        saved = load_run_config(run_dir)
    except (FileNotFoundError, ConfigError):
        return False
    mine, theirs = to_dict(cfg), to_dict(saved)
    for name in IGNORED:
        mine.pop(name), theirs.pop(name)
    return mine == theirs


def train_one(args: list[str]) -> tuple[dict, float]:
    """Train, continue or reuse one run; its held-out figures (summary["eval"]) and its training seconds."""
    from dualtoken_lite.training.loop import run  # noqa: I001 (here: `--help` needs none of the training stack)

    cfg = parse_args(args)
    if not cfg.eval_data:
        raise ConfigError("the ablation compares held-out figures: give --eval-data (default tinyworld-eval)")
    run_dir = Path(cfg.out)
    if same_run(cfg, run_dir):
        cfg.resume = "auto"  # finished: reported; interrupted: continued from its checkpoint
    else:
        cfg.overwrite = True  # nothing there, or another config: start over
    timing = run_dir / TIMING_FILE
    before = json.loads(timing.read_text())["seconds"] if cfg.resume and timing.is_file() else 0.0
    start, summary = time.perf_counter(), {}
    try:
        summary = run(cfg)
    finally:  # an interrupted run keeps the seconds it trained, which its continuation adds to
        seconds = before + (0.0 if summary.get("already_finished") else time.perf_counter() - start)
        atomic_write_text(timing, json.dumps({"seconds": seconds}) + "\n")
    return summary["eval"], seconds


def figures_of(evaluation: dict) -> dict[str, float]:
    """The compared figures of one run: PSNR, chroma PSNR (dB), zero-shot accuracy (%) per attribute."""
    out = {"psnr": evaluation["psnr"], "psnr_chroma": evaluation["psnr_chroma"]}
    out.update({f"zero_shot/{name}": 100 * value for name, value in evaluation.get("semantic", {}).items()})
    return out


def summarise(values: list[float]) -> dict:
    """Mean and range of one figure over the seeds."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "values": values}


def exceeds_spread(a: dict, b: dict) -> bool:
    """True when the two variants' seed ranges do not overlap (the difference is beyond the seed spread)."""
    return a["max"] < b["min"] or b["max"] < a["min"]


def aggregate(per_seed: dict[str, dict[int, dict]]) -> dict:
    """{variant: {seed: eval}} -> each variant's figures over the seeds, and each pair's differences with verdicts."""
    variants = {}
    for key, runs in per_seed.items():
        figures = [figures_of(runs[s]) for s in sorted(runs)]
        names = [n for n in figures[0] if all(n in f for f in figures)]
        variants[key] = {n: summarise([f[n] for f in figures]) for n in names}
    pairs = []
    for pair in PAIRS:
        if pair.start not in variants or pair.to not in variants:
            continue
        a, b = variants[pair.start], variants[pair.to]
        diff = {n: {"delta": b[n]["mean"] - a[n]["mean"], "exceeds_spread": exceeds_spread(a[n], b[n])}
                for n in a if n in b}
        pairs.append({"question": pair.question, "field": pair.field, "from": pair.start, "to": pair.to,
                      "difference": diff})
    return {"variants": variants, "pairs": pairs}


def _name(metric: str) -> str:
    """A figure's column name."""
    return {"psnr": "PSNR (dB)", "psnr_chroma": "chroma PSNR (dB)"}.get(metric, metric.replace("zero_shot/", "zero-shot "))


def markdown(record: dict) -> str:
    """The ablation as markdown: the variants (mean and seed range), the pairs with verdicts, the paper's table."""
    table = record["variants"]
    metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    lines = ["| variant | " + " | ".join(_name(m) for m in metrics) + " | paper |",
             "|---|" + "---|" * (len(metrics) + 1)]
    for key, row in table.items():
        cells = [f"{row[m]['mean']:.2f} ({row[m]['min']:.2f}-{row[m]['max']:.2f})" if m in row else "-"
                 for m in metrics]
        lines.append(f"| `{key}`: {VARIANTS[key].label} | " + " | ".join(cells) + f" | {VARIANTS[key].paper or '-'} |")
    lines += ["", "| difference | changed setting | " + " | ".join(_name(m) for m in metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for pair in record["pairs"]:
        cells = []
        for m in metrics:
            d = pair["difference"].get(m)
            cells.append("-" if d is None else
                         f"{d['delta']:+.2f} ({'exceeds' if d['exceeds_spread'] else 'within'} the seed spread)")
        lines.append(f"| {pair['question']} (`{pair['from']}` -> `{pair['to']}`) | `{pair['field']}` | "
                     + " | ".join(cells) + " |")
    lines += ["", "| paper (ImageNet-1K val, 384 px) | rFID | PSNR (dB) | zero-shot (%) | ours |", "|---|---|---|---|---|"]
    for row in PAPER.values():
        ours = ", ".join(f"`{v.key}`" for v in VARIANTS.values() if v.paper == row.name)
        zero_shot = "-" if row.zero_shot is None else f"{row.zero_shot:.1f}"
        lines.append(f"| {row.name} {row.label} | {row.rfid:.2f} | {row.psnr:.1f} | {zero_shot} | {ours} |")
    teacher = record.get("teacher_zero_shot")
    notes = [f"{record['steps']} steps at batch {record['batch_size']} per run, seeds {record['seeds']}; figures on "
             "held-out images 0-511, mean (lowest-highest over the seeds); a difference exceeds the seed spread when "
             "the two ranges do not overlap."]
    if teacher:
        notes.append("The teacher's own zero-shot accuracy on the same images: " +
                     ", ".join(f"{k} {100 * v:.1f} %" for k, v in teacher.items()) + ".")
    return "\n".join(lines + [""] + notes)


def plan(keys: list[str], seeds: list[int], part: tuple[int, int]) -> list[tuple[str, int]]:
    """The (variant, seed) runs of this invocation: every ``part[1]``-th of them, starting at ``part[0]`` (1-based)."""
    every = [(k, s) for k in keys for s in seeds]
    return every[part[0] - 1::part[1]]


def parse_part(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part {text!r}: give K/N, e.g. 1/2 (this process runs every N-th run from the K-th)"
                          ) from None
    if not 1 <= k <= n:
        raise ConfigError(f"--part {text!r}: K must be between 1 and N")
    return k, n


def run_ablation(steps: int, seeds: list[int], out: str | Path, extra: list[str] | None = None,
                 variants: list[str] | None = None, log=print, part: tuple[int, int] = (1, 1)) -> dict | None:
    """Train this invocation's share of the (variant, seed) runs; once all are finished, write and return the record."""
    extra = extra or []
    if steps < 1:
        raise ConfigError(f"--steps {steps}: give at least 1 optimizer step per run")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed (three to see the spread)")
    keys = variants or list(VARIANTS)
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    fixed = sorted({a.split("=")[0] for a in extra} & RESERVED)
    if fixed:
        raise ConfigError(f"{fixed} would break the one budget; the ablation sets them (use --steps / --seeds / --out)")
    out = Path(out)
    for key, seed in plan(keys, seeds, part):
        log(f"ablation: {key} ({VARIANTS[key].label}), seed {seed}, {steps} steps")
        train_one(run_args(VARIANTS[key], seed, steps, out, extra))
    per_seed, seconds = {}, {}
    for key in keys:  # read every run back (other parts may have trained them); all must be finished
        for seed in seeds:
            cfg = parse_args(run_args(VARIANTS[key], seed, steps, out, extra))
            run_dir = Path(cfg.out)
            if not (run_dir / "summary.json").is_file() or not same_run(cfg, run_dir):
                log(f"ablation: {run_dir} is not finished yet; the table is written once every run is")
                return None
            per_seed.setdefault(key, {})[seed] = json.loads((run_dir / "summary.json").read_text())["eval"]
            seconds.setdefault(key, {})[seed] = json.loads((run_dir / TIMING_FILE).read_text())["seconds"]
    first = per_seed[keys[0]][seeds[0]]
    record = {"steps": steps, "batch_size": cfg.batch_size, "seeds": list(seeds), "trainer_flags": extra,
              **aggregate(per_seed), "teacher_zero_shot": first.get("teacher_semantic", {}),
              "paper": {name: vars(row) for name, row in PAPER.items()},
              "per_seed": {k: {str(s): v for s, v in runs.items()} for k, runs in per_seed.items()},
              "seconds": {k: {str(s): v for s, v in runs.items()} for k, runs in seconds.items()},
              "cpu_hours": sum(v for runs in seconds.values() for v in runs.values()) / 3600}
    atomic_write_text(out / "ablation.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "ablation.md", markdown(record) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite ablation", description=__doc__.split("\n")[0],
                                     epilog="Other --flag value pairs are passed to every training run.",
                                     allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps of every run (the main job's {STEPS})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="one run per seed and variant")
    parser.add_argument("--out", default="runs/ablation", help="folder of the runs, ablation.json and ablation.md")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--part", default="1/1", help="K/N: train every N-th run from the K-th (N processes at once)")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    record = run_ablation(args.steps, args.seeds, args.out, extra, args.variants, part=parse_part(args.part))
    if record is not None:
        print(markdown(record))
        print(f"wrote {args.out}/ablation.json and {args.out}/ablation.md")


if __name__ == "__main__":
    main()
