"""Held-out loss of trained generators: nats per modelled code on images no generator trained on.

    OMP_NUM_THREADS=1 python benchmarks/generator_heldout_loss.py data/unified/generator-both RUN/model ...

The teacher's accuracy on samples moves by several points between two runs whose models are equally good (two
runs with the same held-out loss, 0.924 and 0.925, drew 51.5 and 56.1 %: docs/unified_model.md), so comparing
recipes by one sampled run each reads noise. The held-out loss has no sampling noise: the teacher-forced
cross-entropy of every modelled code of eval images 1024..2047 (all 64 positions, class given, as
``ARGenerator.loss`` in eval mode), beside the same on train images 0..1023. One JSON line per model.
"""

from __future__ import annotations

import argparse
import json

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.unified.generator_training import heldout_loss
from dualtoken_lite.unified.token_cache import load_or_encode
from dualtoken_lite.unified.weights import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="generator folders (data/unified/generator-both, RUN/model)")
    parser.add_argument("--tokenizer", default=str(UNIFIED_TOKENIZER_DIR))
    parser.add_argument("--cache_dir", default="runs/unified/cache")
    args = parser.parse_args()
    tokenizer = DualToken.from_pretrained(args.tokenizer).eval()
    held_out = load_or_encode(tokenizer, args.tokenizer, "eval", 1024, 1024, args.cache_dir)
    train = load_or_encode(tokenizer, args.tokenizer, "train", 0, 1024, args.cache_dir)
    for folder in args.models:
        generator = load_model(folder, kind="generator")  # float32, eval mode
        print(json.dumps({"model": folder, "eval_1024_2047": heldout_loss(generator, held_out),
                          "train_0_1023": heldout_loss(generator, train)}), flush=True)


if __name__ == "__main__":
    main()
