"""Ship a finished `make demo` run as data/tokenizer/: its model in float16 and a card of figures measured on that copy.

Run from the repository root after `make demo`: ``python data/ship_tokenizer.py runs/demo``. It writes
``data/tokenizer/{model.safetensors, config.json, card.json}``; ``tests/test_shipped_tokenizer.py`` reproduces the
card from the shipped files. Float16 halves the file (8 MB instead of 16); the card's figures are measured on the
float16 weights (loaded as float32), beside the run's own float32 figures from its summary.json.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dualtoken_lite import DualToken
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.evaluation.zero_shot import tinyworld_score
from dualtoken_lite.model.pretrained import CONFIG_NAME, WEIGHTS_NAME
from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, to_tensor
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR
from dualtoken_lite.tinyworld.shards import sample_key
from dualtoken_lite.tinyworld.teacher import load_teacher, teacher_fingerprint

EVAL_IMAGES = 512  # eval shard images 0-511, as every card figure


def measure(folder: Path) -> dict:
    """The shipped tokenizer's figures: reconstruction, codebook use and zero-shot through its codes."""
    model = DualToken.from_pretrained(folder)
    images, _ = load_split(ensure_tinyworld(splits=("eval",))["eval"])
    x, keys = to_tensor(images[:EVAL_IMAGES]), [sample_key("eval", i) for i in range(EVAL_IMAGES)]
    batches = [{"image": x[i : i + 32], "key": keys[i : i + 32]} for i in range(0, EVAL_IMAGES, 32)]
    return evaluate_codes(model, batches, semantic=tinyworld_score(load_teacher()))


def main(run: str) -> None:
    run = Path(run)
    summary = json.loads((run / "summary.json").read_text())
    recorded = summary["teacher_fingerprint"]
    if recorded != teacher_fingerprint():
        sys.exit(f"{run} was trained with teacher {recorded}, but data/teacher/ holds {teacher_fingerprint()}: "
                 "retrain it (make demo after removing runs/demo) before shipping")
    out = Path(TOKENIZER_DIR)
    os.makedirs(out, exist_ok=True)
    source = str(run / "model" / WEIGHTS_NAME)
    with safe_open(source, "pt") as f:
        metadata = f.metadata()  # the format marks from_pretrained checks
    halved = {k: v.half() if v.is_floating_point() else v for k, v in load_file(source).items()}
    save_file(halved, str(out / WEIGHTS_NAME), metadata=metadata)
    shutil.copy(run / "model" / CONFIG_NAME, out / CONFIG_NAME)
    torch.set_num_threads(1)
    card = {
        "what": "the tiny DualToken tokenizer that `make demo` trains (runs/demo/model), its weights cast to float16, "
                "shipped so notebooks, README examples and the CLIs can show a working tokenizer without training first",
        "command": "python -m dualtoken_lite.train --preset tiny --out runs/demo --resume auto",
        "shipped_by": "python data/ship_tokenizer.py runs/demo",
        "teacher_fingerprint": recorded,
        "summary": {k: v for k, v in summary.items() if k != "eval"},
        "eval_data": f"data/tinyworld/eval-0000.tar, images 0-{EVAL_IMAGES - 1}",
        "eval": measure(out),
        "run_eval_float32": {k: summary.get("eval", {}).get(k) for k in ("psnr", "psnr_luma", "psnr_chroma", "ssim",
                                                                           "semantic", "teacher_semantic")},
        "conventions": "PSNR/SSIM on RGB in [0, 1], data range 1; luma/chroma BT.601 full range; semantic = zero-shot "
                       "accuracy per attribute of the pooled embedding decoded from the semantic codes, with the "
                       "shipped teacher's text tower (evaluation/zero_shot.py); teacher_semantic = the teacher's own "
                       "on the same images",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["eval"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
