"""Evaluate a tokenizer over a held-out set: reconstruction, codebook usage and semantic accuracy (SPEC §6).

Used by the trainer (periodic and final evaluation) and by `python -m dualtoken_lite.evaluate`. The semantic
figure for the tiny world is the teacher-head accuracy of the pooled embedding computed from the quantized path
(`model.embed`), next to the teacher's own accuracy on the same images: the small-scale stand-in for SigLIP's
zero-shot accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .metrics import CodeUsage, psnr, ssim


@torch.no_grad()
def evaluate_tokenizer(
    model: nn.Module,
    batches: Iterable[dict],
    max_images: int | None = None,
    head: nn.Module | None = None,
    teacher: nn.Module | None = None,
    lpips_metric: nn.Module | None = None,
    progress: bool = False,
) -> dict:
    """Metrics over up to ``max_images`` images of ``batches`` (dicts with "image" (B,3,h,w) and maybe "label").

    head: classifier on the pooled embedding (the teacher's); teacher: the frozen starting trunk, whose pooled
    embedding through the same head gives the reference accuracy.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    qcfg = model.cfg.pixel_quantizer
    usage = {"pixel": CodeUsage(qcfg.codebook_size, qcfg.depth)}
    if model.semantic_quantizer is not None and not model.cfg.shared_quantizer:
        s = model.cfg.semantic_quantizer
        usage["semantic"] = CodeUsage(s.codebook_size, s.depth)
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0, "correct": 0, "teacher_correct": 0}
    n = n_labelled = 0
    bar = tqdm(desc="eval", unit="img", total=max_images, disable=not progress, leave=False)
    for batch in batches:
        x = batch["image"].to(device)
        if max_images is not None:
            x = x[: max_images - n]
        out = model(x)
        sums["psnr"] += psnr(out.reconstruction, x).sum().item()
        sums["ssim"] += ssim(out.reconstruction, x).sum().item()
        if lpips_metric is not None:
            sums["lpips"] += lpips_metric(out.reconstruction.float(), x.float()).item() * x.shape[0]  # batch mean
        usage["pixel"].update(out.pixel_codes)
        if "semantic" in usage:
            usage["semantic"].update(out.semantic_codes)
        if head is not None and "label" in batch and out.pooled is not None:
            y = batch["label"][: x.shape[0]].to(device)
            sums["correct"] += (head(out.pooled).argmax(-1) == y).sum().item()
            if teacher is not None:
                sums["teacher_correct"] += (head(teacher(x)).argmax(-1) == y).sum().item()
            n_labelled += y.numel()
        n += x.shape[0]
        bar.update(x.shape[0])
        if max_images is not None and n >= max_images:
            break
    bar.close()
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluation saw no images: is the evaluation data empty?")
    result = {"images": n, "psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n}
    if lpips_metric is not None:
        result["lpips"] = sums["lpips"] / n
        result["lpips_backbone"] = getattr(lpips_metric, "label", "lpips")
    result["codebook"] = {name: u.summary() for name, u in usage.items()}
    if n_labelled:
        result["semantic_accuracy"] = sums["correct"] / n_labelled
        if teacher is not None:
            result["teacher_accuracy"] = sums["teacher_correct"] / n_labelled
    return result


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    """summary.json of a run: the final evaluation and how the run was made."""
    path = Path(run_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
