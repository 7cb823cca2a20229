"""Captions of image files, or answers to a question about them: ``python -m dualtoken_lite caption MODEL IMAGES``.

    python -m dualtoken_lite caption data/unified/both photos/ a.png               # one caption per image
    python -m dualtoken_lite caption data/unified/both photos/ --question colour    # "red", "blue", ...

Each image is resized to the tokenizer's input size and encoded into its code stacks (the model's tokenizer,
checked by fingerprint); the model then writes, greedily, a caption or the one-word answer to a question about one
attribute (shape, colour, fill or background). Prints ``name<TAB>text`` per image, and with ``--out`` writes the
same as JSON. A file that is not an image is reported on stderr and skipped, the others are still read.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from dualtoken_lite.datasets.images import preprocess
from dualtoken_lite.settings import UserError, atomic_write_text
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR
from dualtoken_lite.unified.generate import load_for_commands
from dualtoken_lite.unified.sampling import write_answers
from dualtoken_lite.unified.sequences import CAPTION, QUESTION_IDS, QUESTIONS, TEXT_VOCABULARY
from dualtoken_lite.unified.token_cache import encode_images, layout_of


@torch.no_grad()
def read_images(model, tokenizer, images: torch.Tensor, question: str | None = None) -> list[str]:
    """Images (B, 3, h, w) in [-1, 1] -> the model's caption of each (or its answer to ``question``)."""
    stacks = encode_images(tokenizer, images, layout_of(tokenizer))  # (B, N, S_all), as the token cache encodes
    marker = QUESTION_IDS[question] if question else CAPTION
    return [TEXT_VOCABULARY.decode(a) for a in write_answers(model, stacks, torch.full((len(images),), marker))]


def main(argv: list[str] | None = None) -> int:
    from dualtoken_lite.tools.common import batched, iter_images, writable_file

    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite caption", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a unified model folder (data/unified/both, or RUN/model)")
    parser.add_argument("inputs", nargs="+", help="image files, folders of them, or tiny-world shards")
    parser.add_argument("--question", choices=QUESTIONS, default=None, help="answer this question instead")
    parser.add_argument("--tokenizer", default=str(TOKENIZER_DIR), help="the tokenizer folder that encodes")
    parser.add_argument("--out", default=None, help="also write {name: text} to this JSON file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give at least 1")
    out = writable_file(args.out) if args.out else None
    model, tokenizer = load_for_commands(args.model, args.tokenizer, args.threads)
    size = tokenizer.cfg.backbone.image_size
    texts, bad = {}, 0
    for chunk in batched(iter_images(args.inputs), args.batch_size):
        good = [(name, im) for name, im in chunk if not isinstance(im, Exception)]
        for name, err in ((n, im) for n, im in chunk if isinstance(im, Exception)):
            print(f"skipped {name}: {err}", file=sys.stderr)
            bad += 1
        if not good:
            continue
        x = torch.stack([preprocess(im, size) for _, im in good])  # (b, 3, h, w) in [-1, 1]
        for (name, _), text in zip(good, read_images(model, tokenizer, x, args.question)):
            texts[name] = text
            print(f"{name}\t{text}")
    if not texts:
        raise UserError(f"no image could be read from {', '.join(args.inputs)}")
    if out is not None:
        atomic_write_text(out, json.dumps(texts, indent=2) + "\n")
    return 0 if not bad else 1
