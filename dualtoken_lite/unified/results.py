"""Judge the unified runs and ship their models: ``python -m dualtoken_lite unified_results --runs runs/unified``.

    python -m dualtoken_lite unified_results --runs runs/unified --out data/unified     # every run, then ship seed 0
    python -m dualtoken_lite unified_results --runs runs/unified --sweep 1,2,3,4         # choose the guidance
    python -m dualtoken_lite unified_results --runs runs/unified --curve                 # text conditioning per checkpoint

``--runs`` holds one run folder per model (``{variant}-s{seed}``, each made by ``train_unified``). For each, on
images and prompts no model trained on (unified/judge.py says how each figure is read):

    generation    2 samples from each of the captions of eval images 0-511 (caption 0: it names every attribute
                  it can), judged by the teacher and the classifier on the decoded pixels, per prompted attribute;
                  Frechet distance of the teacher embeddings to eval images 1024-2047
    combinations  32 samples of "a {colour} {shape}" for each held-out pair (token_cache.HELD_OUT_PAIRS), judged
                  on shape and colour
    understanding the answers to the four questions on eval images 0-511, exact match; the captions of the same
                  images, per attribute named

Beside them, once: the same judges on the tokenizer's full-depth reconstructions of eval images 0-511 (the
ceiling), from its first pixel depth only, and on the originals (the teacher's own zero-shot accuracy); and on the
reconstructions of the eval images 0-1023 that show a held-out pair (the combinations' ceiling).

``--sweep`` instead samples the captions of eval images 512-767 (never the scored ones) at each guidance scale
(at ``--temperature`` and ``--top-k``) with every seed-0 model, and prints the teacher's shape and colour accuracy
and the Frechet distance: the sampling settings are chosen there.
``--curve`` prints, for each checkpoint a run kept, how much the caption tells its model about the first pixel
depth (unified/judge.prompt_information on eval images 0-255): the training curve of text conditioning.
``results.json`` records every figure, the sampling settings, the commands, wall times and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import UserError, atomic_write_text
from dualtoken_lite.tinyworld.captions import CLASSIFIED, FIELDS, claim_code
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR, UNIFIED_DIR
from dualtoken_lite.training.checkpoints import list_checkpoints
from dualtoken_lite.unified.generate import generate_images
from dualtoken_lite.unified.judge import (
    Judge,
    answer_accuracy,
    caption_accuracy,
    held_out,
    prompt_information,
    reconstruct,
)
from dualtoken_lite.unified.sampling import SamplingConfig
from dualtoken_lite.unified.token_cache import HELD_OUT_PAIRS, load_or_encode
from dualtoken_lite.unified.weights import load_model

PROMPTED, REFERENCE, SWEEP = (0, 512), (1024, 1024), (512, 256)  # (start, count) of eval images
SAMPLES_PER_PROMPT, SAMPLES_PER_PAIR = 2, 32


def asked_codes(prompts: list[str]) -> np.ndarray:
    """Prompts -> (B, F) the attribute codes each prompt asks for, -1 where it is silent."""
    return np.stack([claim_code(p) for p in prompts])


def eval_prompts(start: int, count: int) -> list[str]:
    """Caption 0 (every nameable attribute named) of eval images start .. start+count-1."""
    from dualtoken_lite.tinyworld.captions import sample_captions
    from dualtoken_lite.tinyworld.drawing import make_samples

    return [sample_captions(m, 1)[0] for m in make_samples(start, count, "eval")[1]]


def pair_prompts() -> list[str]:
    """SAMPLES_PER_PAIR prompts "a {colour} {shape}" for each held-out pair, pair after pair."""
    return [f"a {CLASSIFIED['colour'][c]} {CLASSIFIED['shape'][s]}" for s, c in HELD_OUT_PAIRS
            for _ in range(SAMPLES_PER_PAIR)]


def judge_run(run: Path, judge: Judge, tokenizer, held, sampling: SamplingConfig, prompts: list[str]) -> dict:
    """Every figure of one run's model (module docstring)."""
    model = load_model(run / "model")
    start = time.time()
    wanted = [p for p in prompts for _ in range(SAMPLES_PER_PROMPT)]
    _, images = generate_images(model, tokenizer, wanted, sampling)
    generation = judge(images, asked_codes(wanted))
    pairs = pair_prompts()
    _, pair_images = generate_images(model, tokenizer, pairs, replace(sampling, seed=1))
    combinations = judge(pair_images, asked_codes(pairs), frechet=False)
    sample_seconds = time.time() - start
    captions, texts = caption_accuracy(model, held)
    summary = json.loads((run / "summary.json").read_text())
    return {"variant": summary["variant"], "seed": summary["seed"], "train_minutes": summary["train_minutes"],
            "steps": summary["steps"], "parameters": summary["parameters"], "command": summary["command"],
            "generation": generation, "combinations": combinations, "answers": answer_accuracy(model, held),
            "captions": captions, "caption_examples": texts[:8], "judge_seconds": round(sample_seconds, 1)}


def ceilings(judge: Judge, tokenizer) -> dict:
    """The judges on reconstructions and originals of the scored eval images, and of the held-out pairs' images."""
    from dualtoken_lite.unified.judge import reconstruction_ceiling
    from dualtoken_lite.unified.token_cache import held_out_combination

    images, codes = held_out(*PROMPTED)
    out = reconstruction_ceiling(judge, tokenizer, images, codes, depths=(1,))
    all_images, all_codes = held_out(0, 1024)
    pick = held_out_combination(torch.from_numpy(all_codes)).numpy()
    asked = np.full_like(all_codes[pick], -1)
    for f in ("shape", "colour"):
        asked[:, FIELDS.index(f)] = all_codes[pick][:, FIELDS.index(f)]
    out["combinations_reconstructions"] = judge(reconstruct(tokenizer, all_images[pick]), asked, frechet=False)
    return out


def find_runs(runs: Path) -> list[Path]:
    """The finished run folders under ``runs`` (a model/ and a summary.json each), sorted by name."""
    found = sorted(p for p in runs.iterdir() if (p / "model").is_dir() and (p / "summary.json").is_file()) \
        if runs.is_dir() else []
    if not found:
        raise UserError(f"no finished unified run found in {runs} (a folder with model/ and summary.json, made by "
                        "`python -m dualtoken_lite train_unified --out RUNS/both-s0`)")
    return found


def sweep(runs: list[Path], judge: Judge, tokenizer, scales: list[float], sampling: SamplingConfig) -> dict:
    """Teacher shape / colour accuracy and Frechet distance of seed-0 models' samples from the captions of eval
    512-767, per guidance scale (``sampling``'s temperature and top-k kept)."""
    prompts = eval_prompts(*SWEEP)
    out = {}
    for run in runs:
        if json.loads((run / "summary.json").read_text())["seed"] != 0:
            continue
        model = load_model(run / "model")
        for scale in scales:
            setting = replace(sampling, guidance=scale)
            _, images = generate_images(model, tokenizer, prompts, setting)
            scores = judge(images, asked_codes(prompts))
            label = f"{run.name} guidance {scale} temperature {setting.temperature} top_k {setting.top_k}"
            out[label] = {k: scores["teacher"][k] for k in ("shape", "colour")} | {"frechet": scores["frechet"]}
            print(label, json.dumps(out[label]), flush=True)
    return out


def curve(runs: list[Path], held) -> dict:
    """Per run, per kept checkpoint: the caption's teacher-forced information about the first pixel depth (nats per
    code, empty prompt minus caption) and the nats per code with the caption, on eval images 0-255."""
    out = {}
    for run in runs:
        for folder in list_checkpoints(run / "checkpoints"):
            info = prompt_information(load_model(folder), held, 256)
            out[f"{run.name} {folder.name}"] = point = {"gain": round(info["gain"][0], 4),
                                                        "with_caption": round(info["with_caption"][0], 3)}
            print(run.name, folder.name, json.dumps(point), flush=True)
    return out


def ship(runs: list[Path], out: Path) -> list[str]:
    """Copy each variant's seed-0 model into ``out/{variant}`` (replacing what was there)."""
    shipped = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        if summary["seed"] == 0:
            target = out / summary["variant"]
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(run / "model", target)
            shipped.append(str(target))
    return shipped


def percent(values: list[float]) -> str:
    """Seed figures (fractions) -> "84.2 / 85.0" (percent, seed order)."""
    return " / ".join(f"{100 * v:.1f}" for v in values)


def format_table(table: dict) -> str:
    """results.json -> the markdown tables of docs/unified_model.md and README (seeds side by side)."""
    by_variant: dict[str, list[dict]] = {}
    for name in sorted(table["runs"]):
        run = table["runs"][name]
        by_variant.setdefault(run["variant"], []).append(run)
    c = table["ceilings"]
    lines = ["| text -> image (seeds) | teacher: shape | teacher: colour | classifier: shape | classifier: colour "
             "| Frechet | held-out pairs, teacher: shape / colour (seeds, ; between) |", "|---|---|---|---|---|---|---|"]
    for v, runs in by_variant.items():
        g = [r["generation"] for r in runs]
        pairs = [r["combinations"]["teacher"] for r in runs]
        lines.append(f"| {v} | {percent([x['teacher']['shape'] for x in g])} | "
                     f"{percent([x['teacher']['colour'] for x in g])} | "
                     f"{percent([x['classifier']['shape'] for x in g])} | "
                     f"{percent([x['classifier']['colour'] for x in g])} | "
                     + " / ".join(f"{x['frechet']:.2f}" for x in g) + " | "
                     + " ; ".join(f"{100 * p['shape']:.1f} / {100 * p['colour']:.1f}" for p in pairs) + " |")
    for key, label in (("reconstructions", "ceiling: full-depth reconstructions"),
                       ("reconstructions_depth1", "first pixel depth only"), ("originals", "the images themselves")):
        r = c[key]
        lines.append(f"| {label} | {100 * r['teacher']['shape']:.1f} | {100 * r['teacher']['colour']:.1f} | "
                     f"{100 * r['classifier']['shape']:.1f} | {100 * r['classifier']['colour']:.1f} | "
                     f"{r['frechet']:.2f} | "
                     + (f"{100 * c['combinations_reconstructions']['teacher']['shape']:.1f} / "
                        f"{100 * c['combinations_reconstructions']['teacher']['colour']:.1f}"
                        if key == "reconstructions" else "") + " |")
    lines += ["", "| image -> text (seeds): exact answers | shape | colour | fill | background |", "|---|---|---|---|---|"]
    for v, runs in by_variant.items():
        lines.append(f"| {v} | " + " | ".join(percent([r["answers"][q] for r in runs])
                                             for q in ("shape", "colour", "fill", "background")) + " |")
    o = c["originals"]["teacher"]
    lines.append("| the teacher's zero-shot on the images | " + " | ".join(
        f"{100 * o[q]:.1f}" for q in ("shape", "colour", "fill", "background")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite unified_results", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/unified", help="the folder of run folders")
    parser.add_argument("--out", default=str(UNIFIED_DIR), help="where the seed-0 models and results.json go")
    parser.add_argument("--tokenizer", default=str(TOKENIZER_DIR))
    parser.add_argument("--cache-dir", default="runs/unified/cache")
    parser.add_argument("--sweep", default=None, help="comma-separated guidance scales to compare (no shipping)")
    parser.add_argument("--curve", action="store_true", help="the caption's information at each kept checkpoint")
    parser.add_argument("--guidance", type=float, default=SamplingConfig().guidance)
    parser.add_argument("--temperature", type=float, default=SamplingConfig().temperature)
    parser.add_argument("--top-k", type=int, default=SamplingConfig().top_k, help="keep the k likeliest codes per slot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the tables of OUT/results.json and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(format_table(json.loads((Path(args.out) / "results.json").read_text())))
        return 0
    runs = find_runs(Path(args.runs))
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    tokenizer = DualToken.from_pretrained(args.tokenizer).eval()
    if args.curve:
        curve(runs, load_or_encode(tokenizer, args.tokenizer, "eval", *PROMPTED, args.cache_dir))
        return 0
    judge = Judge(held_out(*REFERENCE)[0])
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, guidance=args.guidance)
    if args.sweep:
        sweep(runs, judge, tokenizer, [float(s) for s in args.sweep.split(",")], sampling)
        return 0
    held = load_or_encode(tokenizer, args.tokenizer, "eval", *PROMPTED, args.cache_dir)
    prompts = eval_prompts(*PROMPTED)
    table = {"sampling": asdict(sampling), "ceilings": ceilings(judge, tokenizer), "runs": {}}
    for run in runs:
        print(f"judging {run.name}", flush=True)
        table["runs"][run.name] = judge_run(run, judge, tokenizer, held, sampling, prompts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table["shipped"] = ship(runs, out)
    table["command"] = "python -m dualtoken_lite unified_results " + " ".join(argv or [])
    table["threads"] = args.threads
    table["load_average_before"] = [round(v, 2) for v in load_before]
    table["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    atomic_write_text(out / "results.json", json.dumps(table, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0
