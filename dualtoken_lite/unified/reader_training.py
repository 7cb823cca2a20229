"""Train and measure one reader: `python -m dualtoken_lite train_reader --model.variant both --loop.seed 0`.

    OMP_NUM_THREADS=1 python -m dualtoken_lite train_reader --model.variant semantic --out runs/unified/reader-semantic-s0
    OMP_NUM_THREADS=1 python -m dualtoken_lite train_reader --model.variant pixel    --out runs/unified/reader-pixel-s0
    OMP_NUM_THREADS=1 python -m dualtoken_lite train_reader --model.variant both     --out runs/unified/reader-both-s0
    ... --loop.seed 1 --out runs/unified/reader-both-s1      (the second seed)   ... --resume auto (continue a killed run)

The three readers share everything but ``model.variant``: the same training images (train split 0..N-1, encoded once
into the token cache), the same steps, batch, width and depth. At the end the final weights are saved in float16
(``RUN/model``), reloaded, and scored on held-out images (eval split 0..M-1, never trained on): accuracy per
question type (unified/questions.py), beside the majority-answer baseline. ``RUN/summary.json`` holds it all.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import ConfigError, UserError
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.training.run_folder import RunFolder
from dualtoken_lite.unified.fit import (
    LoopConfig,
    fit,
    report_finished,
    run_command,
    ship,
    start_torch,
    unified_rules,
)
from dualtoken_lite.unified.questions import QUESTION_NAMES, majority_baseline
from dualtoken_lite.unified.reader import Reader, ReaderConfig
from dualtoken_lite.unified.token_cache import TokenSet, load_or_encode


@dataclass
class ReaderTrainConfig:
    """One reader's run."""

    out: str = "runs/unified/reader-both-s0"  # run folder (config.json, metrics.jsonl, checkpoints/, model/)
    tokenizer: str = str(UNIFIED_TOKENIZER_DIR)  # the save_pretrained tokenizer folder whose codes the reader reads
    cache_dir: str = "runs/unified/cache"  # where the encoded token caches live (made on first use)
    train_count: int = 16384  # training images: train split samples 0 .. train_count-1
    eval_count: int = 1024  # held-out images: eval split samples 0 .. eval_count-1
    init_from_codebooks: bool = True  # start each slot's code table from the tokenizer's codebook vectors
    resume: str | None = None  # "auto" (continue --out if it has a checkpoint) or a run folder
    overwrite: bool = False  # replace the run already in --out
    model: ReaderConfig = field(default_factory=ReaderConfig)  # the reader's size and variant
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=600, batch_size=64, lr=1e-3))  # optimisation

    def validate(self) -> ReaderTrainConfig:
        """Raise ConfigError naming a bad field; return self."""
        self.model.validate()
        self.loop.validate()
        if self.train_count < self.loop.batch_size or self.eval_count < 1:
            raise ConfigError(f"train_count={self.train_count} must be >= loop.batch_size={self.loop.batch_size} "
                              f"and eval_count={self.eval_count} >= 1")
        if not Path(self.tokenizer, "model.safetensors").is_file():
            raise UserError(f"tokenizer={self.tokenizer}: no model.safetensors there; give a save_pretrained folder "
                            "(the shipped one is data/unified/tokenizer)")
        return self


def check_disjoint(train: TokenSet, held: TokenSet) -> None:
    """Refuse a training set and a held-out set that could share an image: other splits, no identical token rows."""
    if train.split != "train" or held.split != "eval":
        raise UserError(f"the reader trains on the train split and is scored on the eval split; got {train.split!r} "
                        f"and {held.split!r}")
    seen = {row.numpy().tobytes() for row in train.tokens}
    shared = sum(row.numpy().tobytes() in seen for row in held.tokens)
    if shared:
        raise UserError(f"{shared} held-out images have exactly the tokens of a training image; the sets overlap")


def reader_data(cfg: ReaderTrainConfig, tokenizer) -> tuple[TokenSet, TokenSet]:
    """(training set, held-out set) from the token cache, checked to be disjoint."""
    train = load_or_encode(tokenizer, cfg.tokenizer, "train", 0, cfg.train_count, cfg.cache_dir)
    held = load_or_encode(tokenizer, cfg.tokenizer, "eval", 0, cfg.eval_count, cfg.cache_dir)
    check_disjoint(train, held)
    return train, held


@torch.no_grad()
def evaluate_reader(reader: Reader, held: TokenSet, batch_size: int = 256) -> dict[str, float]:
    """Accuracy per question type on a held-out TokenSet (eval mode)."""
    reader.eval()
    stacks = held.stacks()
    logits = torch.cat([reader(stacks[i : i + batch_size]) for i in range(0, len(held), batch_size)])  # (M, Q, A)
    hits = (logits.argmax(-1) == held.labels).float().mean(0)  # (Q,)
    return {name: float(hits[q]) for q, name in enumerate(QUESTION_NAMES)}


def run(cfg: ReaderTrainConfig, command: str = "", given: set[str] | None = None) -> dict:
    """Train (or continue, or report) one reader; return its summary. ``given``: the fields the command line set,
    which a resume compares with the run's saved config (None: all of them)."""
    cfg.validate()
    with RunFolder(cfg, unified_rules(ReaderTrainConfig, "train_reader"), given=given) as folder:
        if folder.plan.action == "finished":
            return report_finished(folder, "accuracy")
        cfg = folder.cfg
        start_torch(cfg)
        start = time.time()
        tokenizer = DualToken.from_pretrained(cfg.tokenizer).eval()
        train, held = reader_data(cfg, tokenizer)
        model = Reader(cfg.model, train.layout)
        if cfg.init_from_codebooks:
            model.embed.init_from_tokenizer(tokenizer)
        stacks, labels = train.stacks(), train.labels  # (N, H*W, S), (N, Q)
        train_start = time.time()
        step = fit(model, folder, lambda idx, g: model.loss(stacks[idx], labels[idx]), len(train))
        shipped, record = ship(model, folder, "reader", (time.time() - train_start) / 60, command)
        summary = {"step": step, "variant": cfg.model.variant, "seed": cfg.loop.seed,
                   "accuracy": evaluate_reader(shipped, held),
                   "majority_baseline": majority_baseline(train.labels, held.labels),
                   "train_images": f"train 0..{cfg.train_count - 1}", "eval_images": f"eval 0..{cfg.eval_count - 1}",
                   "total_minutes": round((time.time() - start) / 60, 2), **record}
        folder.write_summary(summary)
    print(json.dumps(summary["accuracy"], indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_command(ReaderTrainConfig(), run, argv, "train_reader", __doc__.split("\n")[0])
