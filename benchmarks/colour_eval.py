"""A tiny tokenizer's reconstruction, colour and codes on the two halves of the committed eval shard.

    .venv/bin/python benchmarks/colour_eval.py runs/demo/model [--depths] [--json out.json]

Images 512-1023 choose recipes; images 0-511 report them (they are what summary.json and the README quote).
Per half: PSNR, luma and chroma PSNR (BT.601, evaluation.metrics), SSIM, zero-shot accuracy per attribute from the
semantic codes and the shipped teacher's own (evaluation.zero_shot: its text tower); with ``--depths`` also PSNR / luma / chroma when decoding only the first d pixel depths,
and the codebook utilisation and perplexity per depth. The bicubic thumbnails are in ``data/recon_baselines.py``.
"""

from __future__ import annotations

import argparse
import json

import torch

from dualtoken_lite import DualToken
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.evaluation.metrics import luma_chroma_psnr, psnr
from dualtoken_lite.evaluation.zero_shot import tinyworld_score
from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, to_tensor
from dualtoken_lite.tinyworld.shards import sample_key
from dualtoken_lite.tinyworld.teacher import load_teacher

HALVES = {"report (images 0-511)": slice(0, 512), "select (images 512-1023)": slice(512, 1024)}


def batches(x: torch.Tensor, keys: list[str], size: int = 64) -> list[dict]:
    """Images (B, 3, h, w) with their sample keys, from which the zero-shot score reads each image's attributes."""
    return [{"image": x[i : i + size], "key": keys[i : i + size]} for i in range(0, len(x), size)]


@torch.no_grad()
def depth_curve(model: DualToken, x: torch.Tensor) -> list[dict]:
    """PSNR / luma / chroma when the decoder gets only the first d pixel depths (d = 1..D)."""
    codes = torch.cat([model.encode(x[i : i + 64])[0] for i in range(0, len(x), 64)])  # (B, H, W, D)
    rows = []
    for d in range(1, codes.shape[-1] + 1):
        x_hat = torch.cat([model.decode(codes[i : i + 64], depths=d) for i in range(0, len(x), 64)])
        luma, chroma = luma_chroma_psnr(x_hat, x)
        rows.append({"depths": d, "psnr": psnr(x_hat, x).mean().item(), "psnr_luma": luma.mean().item(),
                     "psnr_chroma": chroma.mean().item()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a save_pretrained folder")
    parser.add_argument("--depths", action="store_true", help="also decode the first d depths, d = 1..D")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = DualToken.from_pretrained(args.model).eval()
    images, _ = load_split(ensure_tinyworld(splits=("eval",))["eval"])
    x, keys = to_tensor(images), [sample_key("eval", i) for i in range(len(images))]
    teacher = load_teacher()  # the teacher the shipped tokenizer distilled from
    out = {}
    for name, part in HALVES.items():
        result = evaluate_codes(model, batches(x[part], keys[part]), semantic=tinyworld_score(teacher))
        if args.depths:
            result["by_depth"] = depth_curve(model, x[part])
        out[name] = result
        print(f"{name}: PSNR {result['psnr']:.2f}  luma {result['psnr_luma']:.2f}  chroma {result['psnr_chroma']:.2f}"
              f"  SSIM {result['ssim']:.3f}")
        for attribute, accuracy in result.get("semantic", {}).items():
            print(f"  zero-shot {attribute:10s} {accuracy:.3f} from the codes, {result['teacher_semantic'][attribute]:.3f} "
                  "the teacher's own")
        for row in result.get("by_depth", []):
            print(f"  first {row['depths']} depths: PSNR {row['psnr']:.2f}  luma {row['psnr_luma']:.2f}  "
                  f"chroma {row['psnr_chroma']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
