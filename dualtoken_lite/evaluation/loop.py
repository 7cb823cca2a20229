"""The evaluation loop: a tokenizer over a held-out set, measured through its codes (docs/method.md §6).

One loop serves the trainer (periodic and final evaluation) and ``python -m dualtoken_lite evaluate``.
Everything is measured as a language model sees the tokenizer:

    pixel_codes, semantic_codes = model.encode(x)          # (B, H, W, D) each
    x_hat  = model.decode(pixel_codes)                     # reconstruction from the pixel codes alone
    pooled = model.decode_semantic(semantic_codes)         # embedding from the semantic codes alone

In eval mode these equal the forward pass's outputs (tested). The semantic figures are SigLIP's zero-shot
accuracy of ``pooled`` (``evaluation.zero_shot.SemanticScore``): in the tiny world one classifier per attribute
(shape, colour, fill, background) built from the teacher's text tower, next to the teacher's own accuracy on the
same images, and image -> caption retrieval; at paper scale open_clip's ImageNet classifier.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from dualtoken_lite.datasets.images import to_uint8
from dualtoken_lite.evaluation.metrics import CodeUsage, luma_chroma_psnr, psnr, ssim
from dualtoken_lite.evaluation.zero_shot import SemanticScore


@torch.no_grad()
def evaluate_codes(model: nn.Module, batches: Iterable[dict], max_images: int | None = None,
                   semantic: SemanticScore | None = None, perceptual: nn.Module | None = None, fid=None,
                   progress: bool = False, total: int | None = None) -> dict:
    """Metrics over up to ``max_images`` images of ``batches`` ({"image": (B, 3, h, w), maybe "label", "key"}).

    semantic: scores the pooled embedding from the semantic codes (``zero_shot.tinyworld_score`` or
    ``class_score``); perceptual: a ``Perceptual``; fid: from ``build_fid``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    usage = {"pixel": CodeUsage(model.cfg.pixel_quantizer.codebook_size, model.cfg.pixel_quantizer.depth)}
    separate_semantic = model.semantic_quantizer is not None and not model.cfg.shared_quantizer
    if separate_semantic:
        usage["semantic"] = CodeUsage(model.cfg.semantic_quantizer.codebook_size, model.cfg.semantic_quantizer.depth)
    sums = {"psnr": 0.0, "psnr_luma": 0.0, "psnr_chroma": 0.0, "ssim": 0.0, "lpips": 0.0}
    n = 0
    bar = tqdm(desc="evaluate", unit="img", total=max_images if total is None else total, disable=not progress)
    for batch in batches:
        x = batch["image"].to(device)[: None if max_images is None else max_images - n]  # (B, 3, h, w)
        pixel_codes, semantic_codes = model.encode(x)  # (B, H, W, D) each
        x_hat = model.decode(pixel_codes)  # (B, 3, h, w)
        sums["psnr"] += psnr(x_hat, x).sum().item()
        sums["ssim"] += ssim(x_hat, x).sum().item()
        luma, chroma = luma_chroma_psnr(x_hat, x)  # (B,) each
        sums["psnr_luma"] += luma.sum().item()
        sums["psnr_chroma"] += chroma.sum().item()
        if perceptual is not None:
            sums["lpips"] += perceptual(x_hat.float(), x.float()).item() * x.shape[0]  # batch mean -> sum
        if fid is not None:
            fid.update(to_uint8(x), real=True)
            fid.update(to_uint8(x_hat), real=False)
        usage["pixel"].update(pixel_codes)
        if separate_semantic:
            usage["semantic"].update(semantic_codes)
        if semantic is not None and semantic_codes is not None:
            semantic.update(model.decode_semantic(semantic_codes), x, batch)  # (B, E) from the semantic codes alone
        n += x.shape[0]
        bar.update(x.shape[0])
        if max_images is not None and n >= max_images:
            break
    bar.close()
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluation saw no images: is the data empty?")
    result = {"images": n, "psnr": sums["psnr"] / n, "psnr_luma": sums["psnr_luma"] / n,
              "psnr_chroma": sums["psnr_chroma"] / n, "ssim": sums["ssim"] / n}
    if perceptual is not None:
        result["lpips"], result["lpips_backbone"] = sums["lpips"] / n, getattr(perceptual, "label", "lpips")
    if fid is not None:
        result["rfid"] = float(fid.compute()) if n >= 2 else None  # a covariance needs two images
        result["rfid_features"] = getattr(fid, "features_label", "")
    result["codebook"] = {name: u.summary() for name, u in usage.items()}
    if semantic is not None:
        result.update(semantic.result())
    return result


def format_table(result: dict) -> str:
    """The figures of ``evaluate_codes`` as a printable table."""
    rows = [("images", str(result["images"])), ("PSNR (dB, RGB [0,1], range 1)", f"{result['psnr']:.2f}"),
            ("PSNR luma / chroma (BT.601)", f"{result['psnr_luma']:.2f} / {result['psnr_chroma']:.2f}"),
            ("SSIM (RGB [0,1], range 1)", f"{result['ssim']:.4f}")]
    if "lpips" in result:
        rows.append((f"LPIPS ({result['lpips_backbone']})", f"{result['lpips']:.4f}"))
    if "rfid" in result:
        value = "n/a (< 2 images)" if result["rfid"] is None else f"{result['rfid']:.3f}"
        rows.append((f"rFID ({result['rfid_features']})", value))
    kind = result.get("semantic_metric", "semantic")
    teacher = result.get("teacher_semantic", {})
    for name, value in result.get("semantic", {}).items():
        reference = f"  (teacher {teacher[name]:.4f})" if name in teacher else ""
        rows.append((f"{kind} top-1 {name} (from codes)", f"{value:.4f}{reference}"))
    if "retrieval" in result:
        r = result["retrieval"]
        rows.append(("image -> caption R@1", f"{r['r1']:.4f}  (teacher {r['teacher_r1']:.4f}, chance {r['chance']:.4f})"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"\n{'codebook':<10}{'depth':>6}{'utilisation':>13}{'perplexity':>12}")
    for branch, stats in result["codebook"].items():
        for d, (u, p) in enumerate(zip(stats["utilisation"], stats["perplexity"]), start=1):
            lines.append(f"{branch:<10}{d:>6}{u:>13.4f}{p:>12.2f}")
    return "\n".join(lines)
