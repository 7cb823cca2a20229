"""Train and measure one generator: `python -m dualtoken_lite train_generator --model.variant both`.

    python -m dualtoken_lite train_generator --model.variant pixel --out runs/unified/generator-pixel-s0
    python -m dualtoken_lite train_generator --model.variant both  --out runs/unified/generator-both-s0
    ... --loop.seed 1 --out runs/unified/generator-both-s1   (the second seed)   ... --resume auto (continue a killed run)

The default budget, 3,200 steps x batch 32 with bf16 autocast on both cores of a 2-core CPU (``loop.threads 2``),
fits the whole command in 10 minutes. The recipe (docs/unified_model.md): a 2-D rotary embedding in the spatial
attention, and a one-block depth transformer trained at every one of the 64 positions (the exact loss; two blocks
on a random 32 cost the same time and reach a worse held-out loss). The two generators share everything but
``model.variant``: the same training images and classes (train split 0..N-1, the token cache the readers use),
steps, batch and sizes. At the end the float16 weights are saved (``RUN/model``), reloaded, and ``eval_samples``
images are drawn (an equal number per class, the sampling settings of ``sampling``), decoded by the tokenizer and
judged by the teacher against held-out images (unified/judge.py): class accuracy of the decoded pixels and the
teacher-embedding Frechet distance. ``RUN/summary.json`` holds it,
``RUN/samples/grid.png`` shows 8 samples per class (one row each).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import ConfigError, UserError
from dualtoken_lite.tinyworld.drawing import CLASSES
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.training.run_folder import RunFolder
from dualtoken_lite.unified.ar_generator import ARGenerator, GeneratorConfig
from dualtoken_lite.unified.fit import (
    LoopConfig,
    fit,
    report_finished,
    run_command,
    ship,
    start_torch,
    unified_rules,
)
from dualtoken_lite.unified.judge import Judge, held_out_images
from dualtoken_lite.unified.prompts import SamplingConfig, generate_images, save_sample_grid
from dualtoken_lite.unified.token_cache import load_or_encode


@dataclass
class GeneratorTrainConfig:
    """One generator's run."""

    out: str = "runs/unified/generator-both-s0"  # run folder (config.json, metrics.jsonl, checkpoints/, model/)
    tokenizer: str = str(UNIFIED_TOKENIZER_DIR)  # the save_pretrained tokenizer folder whose codes it models and decodes
    cache_dir: str = "runs/unified/cache"  # where the encoded token caches live (made on first use)
    train_count: int = 16384  # training images: train split samples 0 .. train_count-1
    reference_count: int = 1024  # held-out reference images for the Frechet distance: eval 0 .. reference_count-1
    eval_samples: int = 1024  # images generated for the final measurement (equal per class)
    init_from_codebooks: bool = True  # start each slot's code table from the tokenizer's codebook vectors
    resume: str | None = None  # "auto" (continue --out if it has a checkpoint) or a run folder
    overwrite: bool = False  # replace the run already in --out
    model: GeneratorConfig = field(default_factory=GeneratorConfig)  # size and variant
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=3200, batch_size=32, lr=2e-3, threads=2,
                                                                bf16=True))  # optimisation: both cores, bf16
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how the final measurement samples

    def validate(self) -> GeneratorTrainConfig:
        """Raise ConfigError naming a bad field; return self."""
        self.model.validate()
        self.loop.validate()
        self.sampling.validate()
        if self.train_count < self.loop.batch_size:
            raise ConfigError(f"train_count={self.train_count} must be >= loop.batch_size={self.loop.batch_size}")
        if self.eval_samples < len(CLASSES) or self.eval_samples % len(CLASSES) or self.reference_count < 2:
            raise ConfigError(f"eval_samples={self.eval_samples} must be a positive multiple of {len(CLASSES)} "
                              f"(equal per class) and reference_count={self.reference_count} >= 2")
        if not Path(self.tokenizer, "model.safetensors").is_file():
            raise UserError(f"tokenizer={self.tokenizer}: no model.safetensors there; give a save_pretrained folder "
                            "(the shipped one is data/unified/tokenizer)")
        return self


@torch.no_grad()
def heldout_loss(generator: ARGenerator, data) -> dict:
    """{"loss", "loss_pixel"[, "loss_semantic"]}: mean nats per modelled code over a TokenSet's images, teacher-forced
    (all 64 positions, the class given, ``ARGenerator.loss`` in eval mode): a measure with no sampling noise."""
    was_training = generator.training
    generator.eval()
    _, logs = generator.loss(data.stacks(), data.labels[:, 0])
    generator.train(was_training)
    return {k: round(float(v), 4) for k, v in logs.items()}


def measure_generator(generator: ARGenerator, tokenizer, judge: Judge, count: int, sampling: SamplingConfig,
                      grid_path: Path | None = None) -> dict:
    """Draw ``count`` images (count / 8 per class, class-major), judge them; optionally save an 8 x 8 grid."""
    per_class = count // len(CLASSES)
    classes = torch.arange(len(CLASSES)).repeat_interleave(per_class)  # (count,)
    start = time.time()
    with tqdm(total=count, desc="sample", unit="image") as bar:
        _, images = generate_images(generator, tokenizer, classes, sampling, progress=bar.update)
    report = judge(images, classes.numpy())
    report["sampling"] = asdict(sampling)
    report["sampling_seconds"] = round(time.time() - start, 1)
    if grid_path is not None:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        first = images.reshape(len(CLASSES), per_class, *images.shape[1:])[:, :8]  # (8 classes, 8, h, w, 3)
        save_sample_grid(first.reshape(-1, *images.shape[1:]), len(CLASSES), grid_path)
    return report


def run(cfg: GeneratorTrainConfig, command: str = "", given: set[str] | None = None) -> dict:
    """Train (or continue, or report) one generator; return its summary. ``given``: the fields the command line set,
    which a resume compares with the run's saved config (None: all of them)."""
    cfg.validate()
    with RunFolder(cfg, unified_rules(GeneratorTrainConfig, "train_generator"), given=given) as folder:
        if folder.plan.action == "finished":
            return report_finished(folder, "generation")
        cfg = folder.cfg
        start_torch(cfg)
        tokenizer = DualToken.from_pretrained(cfg.tokenizer).eval()
        train = load_or_encode(tokenizer, cfg.tokenizer, "train", 0, cfg.train_count, cfg.cache_dir)
        model = ARGenerator(cfg.model, train.layout)
        if cfg.init_from_codebooks:
            model.embed.init_from_tokenizer(tokenizer)
        stacks, classes = train.stacks(), train.labels[:, 0]  # (N, H*W, S), (N,) the shape answer = the class id
        start = time.time()
        step = fit(model, folder, lambda idx, g: model.loss(stacks[idx], classes[idx], g), len(train))
        shipped, record = ship(model, folder, "generator", (time.time() - start) / 60, command)
        judge = Judge(held_out_images(0, cfg.reference_count)[0])
        report = measure_generator(shipped, tokenizer, judge, cfg.eval_samples, cfg.sampling,
                                   folder.path / "samples" / "grid.png")
        summary = {"step": step, "variant": cfg.model.variant, "seed": cfg.loop.seed, "generation": report,
                   "reference_images": f"eval 0..{cfg.reference_count - 1}",
                   "train_images": f"train 0..{cfg.train_count - 1}", **record}
        folder.write_summary(summary)
    print(json.dumps({k: v for k, v in report.items() if k != "per_class_accuracy"}, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_command(GeneratorTrainConfig(), run, argv, "train_generator", __doc__.split("\n")[0])
