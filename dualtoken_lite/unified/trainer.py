"""Train the unified model: ``python -m dualtoken_lite train_unified --model.variant both --out RUN``.

    python -m dualtoken_lite train_unified --out runs/unified/both-s0                        # the shipped recipe
    python -m dualtoken_lite train_unified --model.variant pixel --loop.seed 1 --out runs/unified/pixel-s1
    python -m dualtoken_lite train_unified --out runs/unified/both-s0 --resume auto          # continue a stopped run

The data: train images 0 .. train_count-1 encoded once by the tokenizer (unified/token_cache.py), minus every image
that shows a held-out (shape, colour) combination, so no text is ever paired with one. A step draws ``batch_size``
of them and builds both tasks from the same images (``make_batch``):

    text -> image   one of the image's 8 captions at random as the prompt (the empty prompt with probability
                    model.prompt_dropout), then the image's code stacks
    image -> text   the image, then with probability ``question_rate`` a question about one attribute at random and
                    its one-word answer, else one of its captions at random

The run folder is training/'s (training/run_folder.py, through unified/fit.py): one owner, nothing written before
the run can start, SIGTERM / Ctrl-C write a checkpoint and print the command that continues, a resume continues
bit-identically, a NaN stops the run naming the step with the last good checkpoint intact. At the end the model is
saved in float16 to ``RUN/model`` (config.json + model.safetensors, unified/weights.py), loaded back, and the
summary records its held-out answer accuracy (eval images 0-511). The full judging of its
images (teacher and classifier on decoded pixels, Frechet distance) is ``python -m dualtoken_lite unified_results``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import ConfigError, UserError, require_fraction
from dualtoken_lite.tinyworld.captions import CAPTIONS_PER_IMAGE, FIELDS
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR
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
from dualtoken_lite.unified.judge import answer_accuracy
from dualtoken_lite.unified.model import UnifiedConfig, UnifiedModel
from dualtoken_lite.unified.sequences import (
    ANSWER_IDS,
    CAPTION,
    QUESTION_IDS,
    QUESTIONS,
    answer_block,
    caption_ids,
    prompt_block,
)
from dualtoken_lite.unified.token_cache import TokenSet, check_training_rows, load_or_encode, training_rows


@dataclass
class UnifiedTrainConfig:
    """One unified model's run."""

    out: str = "runs/unified/both-s0"  # run folder (config.json, metrics.jsonl, checkpoints/, model/, summary.json)
    tokenizer: str = str(TOKENIZER_DIR)  # the save_pretrained tokenizer folder whose codes the model reads and writes
    cache_dir: str = "runs/unified/cache"  # where the encoded token caches live (made on first use)
    train_count: int = 16384  # training images: train split samples 0 .. train_count-1 (held-out combinations out)
    eval_count: int = 512  # held-out images scored at the end: eval split samples 0 .. eval_count-1
    question_rate: float = 0.5  # P(an image -> text example is a question, not a caption)
    init_from_codebooks: bool = True  # start each slot's code table from the tokenizer's codebook vectors
    resume: str | None = None  # "auto" (continue --out if it has a checkpoint) or a run folder
    overwrite: bool = False  # replace the run already in --out
    model: UnifiedConfig = field(default_factory=UnifiedConfig)  # the model's size and variant
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=3200, batch_size=32, lr=1e-3, threads=1,
                                                                bf16=True, warmup_steps=100, save_every=800))

    def validate(self) -> UnifiedTrainConfig:
        """Raise ConfigError naming a bad field; return self."""
        self.model.validate()
        self.loop.validate()
        require_fraction(self, ("question_rate",))
        if self.train_count < self.loop.batch_size or self.eval_count < 1:
            raise ConfigError(f"train_count={self.train_count} must be >= loop.batch_size={self.loop.batch_size} "
                              f"and eval_count={self.eval_count} >= 1")
        if not Path(self.tokenizer, "model.safetensors").is_file():
            raise UserError(f"tokenizer={self.tokenizer}: no model.safetensors there; give a save_pretrained folder "
                            f"(the shipped one is {TOKENIZER_DIR})")
        return self


def make_batch(data: TokenSet, rows: torch.Tensor, cfg: UnifiedTrainConfig, rng: torch.Generator) -> dict:
    """Both tasks' inputs for the images ``rows`` (B,) of ``data`` (module docstring)."""
    B = len(rows)
    pick = torch.randint(0, CAPTIONS_PER_IMAGE, (2, B), generator=rng)  # a caption per image, per task
    drop = torch.rand(B, generator=rng) < cfg.model.prompt_dropout
    prompts = [caption_ids(data.captions[r, k]) for r, k in zip(rows.tolist(), pick[0].tolist())]
    ask = torch.rand(B, generator=rng) < cfg.question_rate
    which = torch.randint(0, len(QUESTIONS), (B,), generator=rng)
    markers, answers = torch.full((B,), CAPTION), []
    for i, (r, k) in enumerate(zip(rows.tolist(), pick[1].tolist())):
        if ask[i]:
            q = QUESTIONS[int(which[i])]
            markers[i] = QUESTION_IDS[q]
            answers.append([ANSWER_IDS[q][int(data.attributes[r, FIELDS.index(q)])]])
        else:
            answers.append(caption_ids(data.captions[r, k]))
    answer, targets = answer_block(markers, answers)
    stacks = data.stacks[rows]  # (B, N, S_all)
    return {"prompt": prompt_block(prompts, drop), "image_stacks": stacks, "text_stacks": stacks,
            "answer": answer, "targets": targets}


def load_data(cfg: UnifiedTrainConfig, tokenizer) -> tuple[TokenSet, torch.Tensor, TokenSet]:
    """The encoded train images, the rows a model may train on, and the held-out eval images."""
    train = load_or_encode(tokenizer, cfg.tokenizer, "train", 0, cfg.train_count, cfg.cache_dir)
    held = load_or_encode(tokenizer, cfg.tokenizer, "eval", 0, cfg.eval_count, cfg.cache_dir)
    rows = training_rows(train)
    check_training_rows(train, rows)
    return train, rows, held


def build_model(cfg: UnifiedTrainConfig, tokenizer, layout) -> UnifiedModel:
    """A fresh model (seeded by loop.seed), its code tables started from the tokenizer's codebooks if asked."""
    start_torch(cfg)
    model = UnifiedModel(cfg.model, layout)
    if cfg.init_from_codebooks:
        model.image_embed.init_from_tokenizer(tokenizer)
    return model


def run(cfg: UnifiedTrainConfig, command: str = "", given: set[str] | None = None) -> dict:
    """Train (or continue, or report) one unified run; return its summary."""
    cfg.validate()
    with RunFolder(cfg, unified_rules(UnifiedTrainConfig, "train_unified"), given=given) as folder:
        if folder.plan.action == "finished":
            return report_finished(folder, "answers")
        cfg = folder.cfg
        tokenizer = DualToken.from_pretrained(cfg.tokenizer).eval()
        train, rows, held = load_data(cfg, tokenizer)
        model = build_model(cfg, tokenizer, train.layout)

        def batch_loss(idx: torch.Tensor, rng: torch.Generator) -> tuple:
            return model.loss(make_batch(train, rows[idx], cfg, rng), rng)

        start = time.time()
        fit(model, folder, batch_loss, len(rows))
        minutes = (time.time() - start) / 60
        shipped, record = ship(model, folder, "unified", minutes, command)
        summary = {**record, "variant": cfg.model.variant, "seed": cfg.loop.seed, "steps": cfg.loop.steps,
                   "training_images": len(rows),
                   "answers": answer_accuracy(shipped, held)}
        folder.write_summary(summary)
    print(f"{cfg.out}: answers on eval 0-{cfg.eval_count - 1}: "
          + " ".join(f"{q} {v:.3f}" for q, v in summary["answers"].items()))
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_command(UnifiedTrainConfig(), run, argv, "train_unified", "train one unified model (text <-> image)")
