"""Evaluate a tokenizer from the command line: ``python -m dualtoken_lite.evaluate CKPT --data SRC`` (SPEC §6).

    python -m dualtoken_lite.evaluate runs/tiny --data tinyworld-eval                 # RUN/model, or its last step
    python -m dualtoken_lite.evaluate runs/tiny/model --data photos/ --max-images 500 --lpips --fid --json e.json
    python -m dualtoken_lite.evaluate runs/so400m --data 'imagenet-val-{0000..0063}.tar' --zero-shot --lpips --fid

Everything is measured through the codes, as a language model sees the tokenizer:

    pixel_codes, semantic_codes = model.encode(x)          # (B, H, W, D) each
    x_hat  = model.decode(pixel_codes)                     # reconstruction from the pixel codes alone
    pooled = model.decode_semantic(semantic_codes)         # embedding from the semantic codes alone

In eval mode these equal the forward pass's outputs (a test checks the figures equal ``evaluate_tokenizer``'s).

    PSNR, SSIM   per image on RGB in [0, 1] with data_range 1 (SSIM: Gaussian 11 x 11), averaged over images;
                 papers that compute SSIM on [-1, 1] with data_range 2 report different SSIM values
    LPIPS        --lpips: VGG16 LPIPS with the real ImageNet weights (--vgg-weights or torch's hub cache);
                 refused without them unless --allow-random-lpips (then labelled "random backbone")
    rFID         --fid: torchmetrics' FrechetInceptionDistance between the resized/cropped originals and their
                 reconstructions, Inception-v3 pool features (torch-fidelity's port of the TF 2015-12-05 weights).
                 The paper uses ImageNet val, 50,000 images; FID is biased upwards at small sample counts
    codebook     utilisation (distinct codes / K) and perplexity, per branch and residual depth, over the whole set
    semantic     tiny world: top-1 of the teacher's class head on ``pooled`` (and the teacher's own accuracy on the
                 same images, the continuous reference). SigLIP presets: --zero-shot, open_clip's classifier from
                 class names x prompt templates, top-1 on ``pooled`` (needs the text tower's weights, ``transformers``
                 and the tokenizer files; a clear message when they are missing)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .cli import load_tokenizer, pick_device
from .images import to_uint8
from .metrics import CodeUsage, psnr, ssim

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's port of the TF Inception-v3
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE


class MetricUnavailable(RuntimeError):
    """A requested metric needs a package or weights that are not on this machine; the message says which."""


# ------------------------------------------------------------------------------------------------- rFID
def default_inception_path() -> Path:
    """Where torch-fidelity caches its Inception weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def build_fid(feature: nn.Module | None = None, inception_weights: str | os.PathLike | None = None):
    """torchmetrics' FID on uint8 (B, 3, h, w) images; ``feature`` replaces Inception-v3 (any (B, 3, h, w) -> (B, F))."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is not None:
        fid = FrechetInceptionDistance(feature=feature, normalize=False)
        fid.features_label = f"custom: {type(feature).__name__}"
    else:
        how = (f"Get it with `pip install torch-fidelity` (or `pip install torchmetrics[image]`) and put "
               f"{INCEPTION_FILE} (from {INCEPTION_URL}) at {default_inception_path()} or pass --inception-weights.")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise MetricUnavailable(f"rFID needs the `torch-fidelity` package (its Inception-v3 port), which is not "
                                    f"installed. {how}")
        path = Path(inception_weights).expanduser() if inception_weights else default_inception_path()
        if not path.is_file():
            raise MetricUnavailable(f"rFID needs the Inception-v3 weights file {path}, which does not exist. {how}")
        fid = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(path))
        fid.features_label = "inception-v3 pool3 (torch-fidelity, TF 2015-12-05 weights)"
    fid.set_dtype(torch.float64)  # torchmetrics recommends float64: the matrix square root is unstable in float32
    return fid


# ------------------------------------------------------------------------------------------------- zero-shot
class ZeroShotHead(nn.Module):
    """Pooled embeddings (B, E) -> class logits (B, K): cosine similarity with per-class text embeddings."""

    def __init__(self, classifier: Tensor):
        super().__init__()
        self.register_buffer("classifier", classifier)  # (E, K), unit-norm columns (open_clip's layout)

    def forward(self, pooled: Tensor) -> Tensor:
        return F.normalize(pooled.float(), dim=-1) @ self.classifier  # (B, E) @ (E, K) -> (B, K)


def load_classnames(spec: str) -> list[str]:
    """'imagenet' -> open_clip's 1,000 ImageNet class names (label order); a path -> one name per line."""
    if spec == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"--classnames {spec!r}: use 'imagenet' or a text file with one class name per line")
    return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]


def build_zero_shot_head(arch: str, text_weights: str, classnames: list[str], templates: str = "openai",
                         device: str | torch.device = "cpu") -> ZeroShotHead:
    """open_clip's zero-shot classifier (class names x templates) for a SigLIP ``arch`` with its text tower."""
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise MetricUnavailable(f"zero-shot needs an open_clip SigLIP model with a text tower; {arch!r} has none "
                                "(the tiny world measures semantics with its teacher's head: --teacher)")
    try:  # cheap checks first: the tokenizer, then the weights, before building ~900 M parameters
        tokenizer = open_clip.get_tokenizer(arch)
    except (ImportError, OSError, ValueError) as err:
        raise MetricUnavailable(
            f"zero-shot needs {arch!r}'s text tokenizer, which could not be loaded ({type(err).__name__}: {err}). "
            "SigLIP's tokenizer needs the `transformers` package (pip install transformers) and its tokenizer "
            "files in the Hugging Face cache (run open_clip.get_tokenizer once on a machine with internet)"
        ) from err
    local = os.path.exists(text_weights)
    if not local:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if text_weights not in tags:
            raise MetricUnavailable(f"--text-weights {text_weights!r} is neither a file nor a tag of {arch!r} ({tags})")
        try:
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, text_weights))
        except Exception as err:  # hub errors differ by version; all mean "not here"
            raise MetricUnavailable(
                f"zero-shot needs the text tower weights of {arch!r} / {text_weights!r}, which are not in the "
                f"Hugging Face cache ({type(err).__name__}). Fetch them once with open_clip.create_model({arch!r}, "
                f"pretrained={text_weights!r}) on a machine with internet, or pass --text-weights FILE"
            ) from err
    clip = open_clip.create_model(arch, pretrained=text_weights, device=device).eval()
    chosen = open_clip.OPENAI_IMAGENET_TEMPLATES if templates == "openai" else open_clip.SIMPLE_IMAGENET_TEMPLATES
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(clip, tokenizer, classnames, chosen, device=device)
    return ZeroShotHead(classifier.float())


# ------------------------------------------------------------------------------------------------- the loop
@torch.no_grad()
def evaluate_codes(model: nn.Module, batches: Iterable[dict], max_images: int | None = None,
                   head: nn.Module | None = None, teacher: nn.Module | None = None,
                   perceptual: nn.Module | None = None, fid=None, progress: bool = False,
                   total: int | None = None) -> dict:
    """Metrics over up to ``max_images`` images of ``batches`` ({"image": (B, 3, h, w), maybe "label": (B,)}).

    head: classifier on pooled embeddings (teacher head or ZeroShotHead); teacher: a trunk giving the continuous
    reference embedding for the same head; perceptual: a ``Perceptual``; fid: from ``build_fid``.
    """
    model.eval()
    device = next(model.parameters()).device
    usage = {"pixel": CodeUsage(model.cfg.pixel_quantizer.codebook_size, model.cfg.pixel_quantizer.depth)}
    separate_semantic = model.semantic_quantizer is not None and not model.cfg.shared_quantizer
    if separate_semantic:
        usage["semantic"] = CodeUsage(model.cfg.semantic_quantizer.codebook_size, model.cfg.semantic_quantizer.depth)
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0, "correct": 0, "teacher_correct": 0}
    n = n_labelled = 0
    bar = tqdm(desc="evaluate", unit="img", total=max_images if total is None else total, disable=not progress)
    for batch in batches:
        x = batch["image"].to(device)[: None if max_images is None else max_images - n]  # (B, 3, h, w)
        pixel_codes, semantic_codes = model.encode(x)  # (B, H, W, D) each
        x_hat = model.decode(pixel_codes)  # (B, 3, h, w)
        sums["psnr"] += psnr(x_hat, x).sum().item()
        sums["ssim"] += ssim(x_hat, x).sum().item()
        if perceptual is not None:
            sums["lpips"] += perceptual(x_hat.float(), x.float()).item() * x.shape[0]  # batch mean -> sum
        if fid is not None:
            fid.update(to_uint8(x), real=True)
            fid.update(to_uint8(x_hat), real=False)
        usage["pixel"].update(pixel_codes)
        if separate_semantic:
            usage["semantic"].update(semantic_codes)
        if head is not None and "label" in batch and semantic_codes is not None:
            y = batch["label"][: x.shape[0]].to(device)
            pooled = model.decode_semantic(semantic_codes)  # (B, E) from the semantic codes alone
            sums["correct"] += (head(pooled).argmax(-1) == y).sum().item()
            if teacher is not None:
                sums["teacher_correct"] += (head(teacher(x)).argmax(-1) == y).sum().item()
            n_labelled += y.numel()
        n += x.shape[0]
        bar.update(x.shape[0])
        if max_images is not None and n >= max_images:
            break
    bar.close()
    if n == 0:
        raise ValueError("evaluation saw no images: is the data empty?")
    result = {"images": n, "psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n}
    if perceptual is not None:
        result["lpips"], result["lpips_backbone"] = sums["lpips"] / n, getattr(perceptual, "label", "lpips")
    if fid is not None:
        result["rfid"] = float(fid.compute()) if n >= 2 else None  # a covariance needs two images
        result["rfid_features"] = getattr(fid, "features_label", "")
    result["codebook"] = {name: u.summary() for name, u in usage.items()}
    if n_labelled:
        result["semantic_accuracy"] = sums["correct"] / n_labelled
        if teacher is not None:
            result["teacher_accuracy"] = sums["teacher_correct"] / n_labelled
    return result


def format_table(result: dict) -> str:
    """The figures of ``evaluate_codes`` as a printable table."""
    rows = [("images", str(result["images"])), ("PSNR (dB, RGB [0,1], range 1)", f"{result['psnr']:.2f}"),
            ("SSIM (RGB [0,1], range 1)", f"{result['ssim']:.4f}")]
    if "lpips" in result:
        rows.append((f"LPIPS ({result['lpips_backbone']})", f"{result['lpips']:.4f}"))
    if "rfid" in result:
        value = "n/a (< 2 images)" if result["rfid"] is None else f"{result['rfid']:.3f}"
        rows.append((f"rFID ({result['rfid_features']})", value))
    kind = result.get("semantic_metric", "semantic")
    for key, label in (("semantic_accuracy", f"{kind} top-1 (from codes)"), ("teacher_accuracy", "teacher top-1")):
        if key in result:
            rows.append((label, f"{result[key]:.4f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"\n{'codebook':<10}{'depth':>6}{'utilisation':>13}{'perplexity':>12}")
    for branch, stats in result["codebook"].items():
        for d, (u, p) in enumerate(zip(stats["utilisation"], stats["perplexity"]), start=1):
            lines.append(f"{branch:<10}{d:>6}{u:>13.4f}{p:>12.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- command line
def resolve_data(source: str) -> str | list[str]:
    """'tinyworld-eval' / 'tinyworld' -> the bundled shards (written on first use); anything else as given."""
    if source not in ("tinyworld", "tinyworld-eval"):
        return source
    from .tinyworld import ensure_tinyworld
    from .trainer import TINYWORLD_ROOT

    split = "eval" if source.endswith("eval") else "train"
    return ensure_tinyworld(str(TINYWORLD_ROOT), splits=(split,))[split]


def semantic_head(model, args, device) -> tuple[nn.Module | None, nn.Module | None, str | None]:
    """(head, teacher trunk, metric name) chosen by --zero-shot / --teacher; a clear error when unavailable."""
    arch = model.cfg.backbone.arch
    if model.cfg.semantic_layer is None:
        return None, None, None
    if args.zero_shot:
        if args.teacher not in ("auto", "none"):
            raise MetricUnavailable("choose one semantic metric: --zero-shot (SigLIP presets) or --teacher (tiny world)")
        head = build_zero_shot_head(arch, args.text_weights, load_classnames(args.classnames), args.templates, device)
        return head, None, "zero-shot"
    from .teacher import CARD_FILE, TEACHER_DIR, load_teacher

    choice = args.teacher
    if choice == "auto":  # the shipped teacher when it is there and fits, else no semantic metric
        there = os.path.exists(os.path.join(TEACHER_DIR, CARD_FILE))
        choice = "shipped" if arch == "tiny" and there else "none"
        if choice == "none":
            print("note: no semantic accuracy (no shipped teacher for this model; pass --teacher FOLDER or "
                  "--zero-shot)", file=sys.stderr)
    if choice == "none":
        return None, None, None
    trunk, head = load_teacher(None if choice == "shipped" else choice)
    if head.in_features != model.cfg.backbone.width:
        raise MetricUnavailable(f"the teacher's head takes {head.in_features}-d embeddings but this model pools "
                                f"{model.cfg.backbone.width}-d ones; use a teacher of this model's world")
    return head.to(device), trunk.to(device), "teacher-head"


def main(argv: list[str] | None = None, fid_feature: nn.Module | None = None) -> int:
    """The command line; ``fid_feature`` replaces Inception-v3 for rFID (tests use a small stand-in network)."""
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="model folder (save_pretrained) or training run folder")
    parser.add_argument("--data", required=True, help="folder, .tar shard(s), brace pattern, or tinyworld-eval")
    parser.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    parser.add_argument("--teacher", default="auto", help="auto | shipped | FOLDER | none (tiny world's head)")
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
    return run(parser.parse_args(argv), fid_feature)


def run(args, fid_feature: nn.Module | None = None) -> int:
    """Evaluate as ``args`` say; every metric is set up (or refused) before any image is read."""
    from .data import build_loader
    from .perceptual import Perceptual, PerceptualWeightsMissing

    model, folder = load_tokenizer(args.checkpoint, pick_device(args.device))
    device = next(model.parameters()).device
    try:
        head, teacher, kind = semantic_head(model, args, device)
        perceptual = Perceptual(args.vgg_weights, args.allow_random_lpips).to(device) if args.lpips else None
        fid = build_fid(fid_feature, args.inception_weights).to(device) if args.fid else None
    except (MetricUnavailable, PerceptualWeightsMissing, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        loader = build_loader(resolve_data(args.data), model.cfg.backbone.image_size, args.batch_size, train=False)
        available = sum(loader.stream.unit_counts())
    except (FileNotFoundError, ValueError) as err:  # a missing path, an unreadable source: say so, no traceback
        print(f"error: --data {args.data!r}: {err}", file=sys.stderr)
        return 2
    total = available if args.max_images is None else min(args.max_images, available)
    result = evaluate_codes(model, loader, args.max_images, head, teacher, perceptual, fid, progress=True, total=total)
    if kind is not None and "semantic_accuracy" in result:
        result["semantic_metric"] = kind
    elif kind is not None:
        print("note: the data has no labels, so no semantic accuracy", file=sys.stderr)
    if loader.skips.total:
        result["skipped"] = loader.skips.as_dict()
    result = {"checkpoint": str(folder), "data": args.data, **result,
              "conventions": "PSNR/SSIM on RGB in [0, 1], data_range 1; codebook stats over the whole set"}
    print(format_table(result))
    out = Path(args.json) if args.json else folder / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
