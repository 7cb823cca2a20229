"""Evaluate a tokenizer from the command line: ``python -m dualtoken_lite evaluate CKPT --data SRC`` (docs/method.md §6).

    python -m dualtoken_lite evaluate runs/tiny --data tinyworld-eval                 # RUN/model, or its last step
    python -m dualtoken_lite evaluate runs/tiny/model --data photos/ --max-images 500 --lpips --fid --json e.json
    python -m dualtoken_lite evaluate runs/so400m --data 'imagenet-val-{0000..0063}.tar' --zero-shot --lpips --fid

Everything is measured through the codes, as a language model sees the tokenizer (``evaluation.loop``):

    PSNR, SSIM   per image on RGB in [0, 1] with data_range 1 (SSIM: Gaussian 11 x 11), averaged over images;
                 papers that compute SSIM on [-1, 1] with data_range 2 report different SSIM values
    LPIPS        --lpips: VGG16 LPIPS with the real ImageNet weights (--vgg-weights or torch's hub cache);
                 refused without them unless --allow-random-lpips (then labelled "random backbone")
    rFID         --fid: torchmetrics' FrechetInceptionDistance between the resized/cropped originals and their
                 reconstructions, Inception-v3 pool features (torch-fidelity's port of the TF 2015-12-05 weights).
                 The paper uses ImageNet val, 50,000 images; FID is biased upwards at small sample counts
    codebook     utilisation (distinct codes / K) and perplexity, per branch and residual depth, over the whole set
    semantic     zero-shot top-1 on ``pooled``, one code path (``evaluation.zero_shot``) at both scales: class
                 names x prompt templates through a SigLIP text tower. Tiny world: the teacher's text tower, one
                 classifier per attribute (shape 8, colour 7, fill 4, background 4), beside the teacher's own
                 accuracy on the same images, and image -> caption R@1 (with its chance level) over the images'
                 full captions. SigLIP presets: --zero-shot, open_clip's text tower and ImageNet classifier (needs
                 the text tower's weights, ``transformers`` and the tokenizer files; a clear message when missing)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from torch import nn

from dualtoken_lite.datasets.loader import build_loader
from dualtoken_lite.evaluation.external import (
    INCEPTION_FILE,
    MetricUnavailable,
    build_fid,
    build_zero_shot_head,
    load_classnames,
)
from dualtoken_lite.evaluation.loop import evaluate_codes, format_table
from dualtoken_lite.evaluation.zero_shot import SemanticScore, class_score, tinyworld_score
from dualtoken_lite.losses.perceptual import Perceptual, PerceptualWeightsMissing
from dualtoken_lite.model.hf_siglip import HF_REPO_PREFIX, read_hf_config_json
from dualtoken_lite.settings import UserError
from dualtoken_lite.tinyworld.paths import TEACHER_DIR
from dualtoken_lite.tinyworld.shards import resolve_data
from dualtoken_lite.tinyworld.teacher import CARD_FILE, load_teacher
from dualtoken_lite.tools.common import load_tokenizer, pick_device


# ------------------------------------------------------------------------------------------------- command line
def semantic_score(model, args, device) -> SemanticScore | None:
    """The semantic metric chosen by --zero-shot / --teacher (``evaluation.zero_shot``); a clear error when unavailable."""
    arch = model.cfg.backbone.arch
    if model.cfg.semantic_layer is None:
        return None
    if args.zero_shot:
        if args.teacher not in ("auto", "none"):
            raise MetricUnavailable("choose one semantic metric: --zero-shot (SigLIP presets) or --teacher (tiny world)")
        start = model.cfg.backbone.pretrained or ""
        if start.startswith(HF_REPO_PREFIX) or (start and read_hf_config_json(start) is not None):
            raise MetricUnavailable(
                f"this model's tower starts from transformers' {start} (SigLIP2 for the released checkpoints); its "
                "zero-shot needs that model's own text tower, which this evaluator does not build yet, and "
                f"open_clip's {args.text_weights!r} text tower belongs to another SigLIP: its scores would mean "
                "nothing. Measure reconstruction here; zero-shot with the transformers text tower is not implemented"
            )
        head = build_zero_shot_head(arch, args.text_weights, load_classnames(args.classnames), args.templates, device)
        return class_score(head, "zero-shot")

    choice = args.teacher
    if choice == "auto":  # the shipped teacher when it is there and fits, else no semantic metric
        there = (TEACHER_DIR / CARD_FILE).exists()
        choice = "shipped" if arch == "tiny" and there else "none"
        if choice == "none":
            print("note: no semantic accuracy (no shipped teacher for this model; pass --teacher FOLDER or "
                  "--zero-shot)", file=sys.stderr)
    if choice == "none":
        return None
    teacher = load_teacher(None if choice == "shipped" else choice)
    if teacher.backbone.width != model.cfg.backbone.width:
        raise MetricUnavailable(f"the teacher embeds images in {teacher.backbone.width} dimensions but this model "
                                f"pools {model.cfg.backbone.width}-d ones; use a teacher of this model's world")
    return tinyworld_score(teacher.to(device), device)


def main(argv: list[str] | None = None, fid_feature: nn.Module | None = None) -> int:
    """The command line; ``fid_feature`` replaces Inception-v3 for rFID (tests use a small stand-in network)."""
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="model folder (save_pretrained) or training run folder")
    parser.add_argument("--data", required=True, help="folder, .tar shard(s), brace pattern, or tinyworld-eval")
    parser.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    parser.add_argument("--teacher", default="auto", help="auto | shipped | FOLDER | none (tiny world's teacher)")
    parser.add_argument("--zero-shot", action="store_true", help="open_clip zero-shot top-1 (SigLIP presets)")
    parser.add_argument("--text-weights", default="webli", help="open_clip tag or file with the text tower")
    parser.add_argument("--classnames", default="imagenet", help="'imagenet' or a file, one name per label")
    parser.add_argument("--templates", default="openai", choices=["openai", "simple"], help="prompt templates")
    parser.add_argument("--lpips", action="store_true", help="LPIPS-VGG (needs VGG16 ImageNet weights)")
    parser.add_argument("--vgg-weights", default=None, help="path of torchvision's vgg16-397923af.pth")
    parser.add_argument("--allow-random-lpips", action="store_true", help="LPIPS with a random VGG (labelled)")
    parser.add_argument("--fid", action="store_true", help="rFID (needs torch-fidelity + Inception weights)")
    parser.add_argument("--inception-weights", default=None, help=f"path of {INCEPTION_FILE}")
    parser.add_argument("--json", default=None, help="where to write the results (default: CKPT folder/eval.json)")
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1 (or left out for all images); got {args.max_images}")
    return run(args, fid_feature)


def run(args, fid_feature: nn.Module | None = None) -> int:
    """Evaluate as ``args`` say; every metric is set up (or refused) before any image is read."""

    model, folder = load_tokenizer(args.checkpoint, pick_device(args.device))
    device = next(model.parameters()).device
    out = Path(args.json) if args.json else folder / "eval.json"
    parent = out.parent if out.parent.exists() else None
    if out.is_dir() or parent is None or not os.access(parent, os.W_OK):
        print(f"error: cannot write the results to {out}; pass --json with a writable file path", file=sys.stderr)
        return 2
    try:
        semantic = semantic_score(model, args, device)
        perceptual = Perceptual(args.vgg_weights, args.allow_random_lpips).to(device) if args.lpips else None
        fid = build_fid(fid_feature, args.inception_weights).to(device) if args.fid else None
    except (MetricUnavailable, PerceptualWeightsMissing, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        loader = build_loader(resolve_data(args.data), model.cfg.backbone.image_size, args.batch_size, train=False)
        available = sum(loader.stream.unit_counts())
    except (FileNotFoundError, ValueError) as err:  # a missing path, an unreadable source: say so, no traceback
        print(f"error: --data {args.data!r}: {err}", file=sys.stderr)
        return 2
    total = available if args.max_images is None else min(args.max_images, available)
    result = evaluate_codes(model, loader, args.max_images, semantic, perceptual, fid, progress=True, total=total)
    if semantic is not None and "semantic_accuracy" not in result:
        print("note: the data has no labels (tiny world: no tiny-world sample keys), so no semantic accuracy",
              file=sys.stderr)
    if loader.skips.total:
        result["skipped"] = loader.skips.as_dict()
    result = {"checkpoint": str(folder), "data": args.data, **result,
              "conventions": "PSNR/SSIM on RGB in [0, 1], data_range 1; codebook stats over the whole set"}
    print(format_table(result))
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
