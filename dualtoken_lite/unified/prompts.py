"""From a prompt to pictures: class name -> sampled code stacks -> the tokenizer's decoder -> PNG files.

    python -m dualtoken_lite.generate data/unified/generator-both --prompt star --num 16 --out samples/
    python -m dualtoken_lite.generate data/unified/generator-both --prompt star heart --temperature 0.9 --top-k 64

A prompt is one of the tiny world's shape classes (an unknown one is an error listing them). The generator's
model folder names the tokenizer it was trained on (its fingerprint); ``--tokenizer`` is the folder to decode with
(default: the shipped ``data/tokenizer``), and a different tokenizer is refused, since codes only mean something to
the tokenizer that made them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.token_layout import TokenLayout, from_lm_sequence
from dualtoken_lite.settings import ConfigError, UserError
from dualtoken_lite.tinyworld.drawing import CLASSES
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.unified.judge import decode_depths, to_uint8
from dualtoken_lite.unified.token_cache import fingerprint


@dataclass
class SamplingConfig:
    """How codes are drawn from a generator."""

    temperature: float = 1.0  # logits / temperature before the softmax (0 = always the most likely code)
    top_k: int | None = None  # keep only the k most likely codes of each slot (None = all)
    guidance: float = 1.75  # classifier-free guidance scale (1 = the plain conditional model; docs/unified_model.md)
    seed: int = 0  # seeds the sampler's generator: the same seed gives the same images
    batch_size: int = 128  # images sampled together

    def validate(self) -> SamplingConfig:
        """Raise ConfigError naming a bad field; return self."""
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ConfigError(f"temperature={self.temperature} must be a finite number >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be >= 1 (or None for all codes)")
        if not (self.guidance >= 0 and np.isfinite(self.guidance)):
            raise ConfigError(f"guidance={self.guidance} must be a finite number >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        return self


def parse_prompt(prompt: str) -> int:
    """A class name (case and spaces ignored) -> its class id; anything else is a UserError listing the classes."""
    name = prompt.strip().lower()
    if name not in CLASSES:
        raise UserError(f"unknown prompt {prompt!r}: this generator draws the tiny world's shapes; choose one of "
                        f"{', '.join(CLASSES)}")
    return CLASSES.index(name)


def modelled_layout(layout: TokenLayout, cfg) -> TokenLayout:
    """The layout of the codes a generator emits: its first pixel depths, then (variant "both") semantic ones."""
    semantic = cfg.semantic_depths if cfg.variant == "both" else 0
    return dataclasses.replace(layout, pixel_depth=cfg.pixel_depths, semantic_depth=semantic,
                               semantic_codebook_size=layout.semantic_codebook_size if semantic else 0)


def stacks_to_pixel_codes(stacks: torch.Tensor, generator) -> torch.Tensor:
    """Sampled stacks (B, N, S) -> pixel codes (B, H, W, d) of the modelled depths, every id checked."""
    pixel, _ = from_lm_sequence(stacks.flatten(1), modelled_layout(generator.layout, generator.cfg))
    return pixel  # raises above naming any id outside its slot's range


@torch.no_grad()
def generate_images(generator, tokenizer, classes: torch.Tensor, sampling: SamplingConfig,
                    progress=None) -> tuple[torch.Tensor, np.ndarray]:
    """classes (B,) -> (stacks (B, N, S) layout ids, images uint8 (B, h, w, 3) decoded from their pixel codes)."""
    sampling.validate()
    rng = torch.Generator().manual_seed(sampling.seed)
    stacks, images = [], []
    for i in range(0, len(classes), sampling.batch_size):
        s = generator.sample(classes[i : i + sampling.batch_size], sampling.temperature, sampling.top_k,
                             sampling.guidance, generator=rng)  # (b, N, S)
        stacks.append(s)
        images.append(to_uint8(decode_depths(tokenizer, stacks_to_pixel_codes(s, generator))))
        if progress is not None:
            progress(len(s))
    return torch.cat(stacks), np.concatenate(images)


def check_tokenizer(generator, tokenizer_dir: str | os.PathLike) -> None:
    """Refuse to decode with a tokenizer other than the one the generator was trained on."""
    trained_on = getattr(generator, "tokenizer_id", None)
    if trained_on and trained_on != fingerprint(tokenizer_dir):
        raise UserError(f"the generator was trained on tokenizer {trained_on}, but {tokenizer_dir} is "
                        f"{fingerprint(tokenizer_dir)}: pass --tokenizer with the folder it was trained on")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from dualtoken_lite.unified.weights import load_model

    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite.generate", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a generator folder (data/unified/generator-both, or RUN/model)")
    parser.add_argument("--prompt", nargs="+", required=True, help=f"class name(s): {', '.join(CLASSES)}")
    parser.add_argument("--num", type=int, default=16, help="images per prompt")
    parser.add_argument("--out", required=True, help="folder for the PNGs, a grid.png and samples.json")
    parser.add_argument("--tokenizer", default=str(UNIFIED_TOKENIZER_DIR), help="the tokenizer folder that decodes")
    defaults = SamplingConfig()
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    labels = [parse_prompt(p) for p in args.prompt]  # bad prompts fail before anything loads
    if args.num < 1:
        raise UserError(f"--num {args.num}: give at least 1 image per prompt")
    sampling = SamplingConfig(args.temperature, args.top_k, args.guidance, args.seed).validate()
    torch.set_num_threads(args.threads)
    if not Path(args.model).is_dir():
        raise UserError(f"{args.model} is not a folder: give a generator folder such as data/unified/generator-both")
    generator = load_model(args.model, kind="generator")
    check_tokenizer(generator, args.tokenizer)
    tokenizer = DualToken.from_pretrained(args.tokenizer).eval()
    classes = torch.tensor([k for k in labels for _ in range(args.num)])
    with tqdm(total=len(classes), desc="generate", unit="image") as bar:
        _, images = generate_images(generator, tokenizer, classes, sampling, progress=bar.update)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (k, image) in enumerate(zip(classes.tolist(), images)):
        names.append(f"{CLASSES[k]}_{i % args.num:03d}.png")
        Image.fromarray(image).save(out / names[-1])
    save_sample_grid(images, len(labels), out / "grid.png")
    (out / "samples.json").write_text(json.dumps({"model": str(args.model), "prompts": args.prompt, "files": names,
                                                  "sampling": asdict(sampling)}, indent=2) + "\n")
    print(f"wrote {len(images)} images, grid.png and samples.json to {out}")
    return 0


def save_sample_grid(images: np.ndarray, rows: int, path: str | os.PathLike, upscale: int = 2) -> Path:
    """uint8 images (rows x cols, h, w, 3), row-major -> one PNG grid with a 2 px white gap."""
    cols = len(images) // rows
    h, w = images.shape[1:3]
    grid = np.full((rows * (h + 2) - 2, cols * (w + 2) - 2, 3), 255, np.uint8)
    for i, image in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = image
    picture = Image.fromarray(grid)
    picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    picture.save(path)
    return Path(path)
