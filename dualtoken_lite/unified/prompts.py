"""From a prompt to pictures: class name -> sampled code stacks -> the tokenizer's decoder -> PNG files.

    python -m dualtoken_lite generate data/unified/generator-both --prompt star --num 16 --out samples/
    python -m dualtoken_lite generate data/unified/generator-both --prompt star heart --temperature 0.9 --top-k 64

A prompt is one of the tiny world's shape classes (an unknown one is an error listing them). The generator's
model folder names the tokenizer it was trained on (its fingerprint); ``--tokenizer`` is the folder to decode with
(default: the shipped ``data/unified/tokenizer``), and a different tokenizer is refused, since codes only mean
something to the tokenizer that made them. Every argument is checked before anything is sampled. Each PNG is written as soon as
its batch is drawn, so Ctrl-C or SIGTERM keeps what was drawn (``samples.json`` lists it); ``grid.png`` shows the
first 8 images of each prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualtoken_lite.datasets.images import make_grid_image, save_image, to_uint8
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.token_layout import TokenLayout, from_lm_sequence
from dualtoken_lite.settings import ConfigError, UserError, atomic_path, atomic_write_text
from dualtoken_lite.tinyworld.drawing import CLASSES
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
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
def draw(generator, tokenizer, classes: torch.Tensor, sampling: SamplingConfig
         ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """classes (B,) -> batch after batch of ``sampling.batch_size``: (stacks (b, N, S) layout ids, images uint8
    (b, h, w, 3) decoded from their pixel codes)."""
    sampling.validate()
    rng = torch.Generator().manual_seed(sampling.seed)
    for i in range(0, len(classes), sampling.batch_size):
        s = generator.sample(classes[i : i + sampling.batch_size], sampling.temperature, sampling.top_k,
                             sampling.guidance, rng=rng)  # (b, N, S)
        pixel_codes = stacks_to_pixel_codes(s, generator)  # (b, H, W, d): the generator's first d pixel depths
        yield s, to_uint8(tokenizer.decode(pixel_codes, depths=pixel_codes.shape[-1]), channels_last=True).numpy()


def generate_images(generator, tokenizer, classes: torch.Tensor, sampling: SamplingConfig,
                    progress=None) -> tuple[torch.Tensor, np.ndarray]:
    """classes (B,) -> (stacks (B, N, S) layout ids, images uint8 (B, h, w, 3)), all of them at once."""
    stacks, images = [], []
    for s, batch in draw(generator, tokenizer, classes, sampling):
        stacks.append(s)
        images.append(batch)
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

    from dualtoken_lite.tools.common import writable_folder
    from dualtoken_lite.training.interrupts import Interrupted, StopSignals, signal_name
    from dualtoken_lite.unified.weights import load_model

    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite generate", description=__doc__.split("\n")[0])
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
    labels = [parse_prompt(p) for p in args.prompt]  # every argument is checked before anything loads
    if args.num < 1 or args.threads < 1:
        raise UserError(f"--num {args.num} and --threads {args.threads}: give at least 1 of each")
    sampling = SamplingConfig(args.temperature, args.top_k, args.guidance, args.seed).validate()
    out = writable_folder(args.out)
    if not Path(args.model).is_dir():
        raise UserError(f"{args.model} is not a folder: give a generator folder such as data/unified/generator-both")
    if not Path(args.tokenizer, "model.safetensors").is_file():
        raise UserError(f"--tokenizer {args.tokenizer}: no model.safetensors there; give a tokenizer folder such as "
                        "data/unified/tokenizer")
    torch.set_num_threads(args.threads)
    generator = load_model(args.model, kind="generator")
    check_tokenizer(generator, args.tokenizer)
    tokenizer = DualToken.from_pretrained(args.tokenizer).eval()
    classes = torch.tensor([k for k in labels for _ in range(args.num)])
    out.mkdir(parents=True, exist_ok=True)
    names, counts, firsts = [], dict.fromkeys(labels, 0), {k: [] for k in labels}  # firsts: 8 per prompt, for grid.png
    try:
        with StopSignals(), tqdm(total=len(classes), desc="generate", unit="image") as bar:
            for _, images in draw(generator, tokenizer, classes, sampling):
                batch_classes = classes[len(names) : len(names) + len(images)].tolist()
                for k, image in zip(batch_classes, images):
                    name = f"{CLASSES[k]}_{counts[k]:03d}.png"
                    with atomic_path(out / name) as tmp:  # a stop never leaves half a PNG
                        Image.fromarray(image).save(tmp, format="PNG")
                    names.append(name)
                    counts[k] += 1
                    if len(firsts[k]) < 8:
                        firsts[k].append(image)
                bar.update(len(images))
    except Interrupted as stop:
        write_manifest(out, args, names, sampling)
        raise Interrupted(stop.signum, f"stopped by {signal_name(stop.signum)}: {len(names)} of {len(classes)} "
                                       f"images written to {out} (samples.json lists them)") from None
    cols = min(8, args.num)
    save_sample_grid(np.stack([im for k in labels for im in firsts[k][:cols]]), len(labels), out / "grid.png")
    write_manifest(out, args, names, sampling)
    print(f"wrote {len(names)} images, grid.png and samples.json to {out}")
    return 0


def write_manifest(out: Path, args, names: list[str], sampling: SamplingConfig) -> None:
    """samples.json: the model, the prompts, the files written, the sampling settings."""
    atomic_write_text(out / "samples.json", json.dumps({"model": str(args.model), "prompts": args.prompt,
                                                         "files": names, "sampling": asdict(sampling)}, indent=2) + "\n")


def save_sample_grid(images: np.ndarray, rows: int, path: str | os.PathLike, upscale: int = 2) -> Path:
    """uint8 images (rows x cols, h, w, 3), row-major -> one PNG grid (datasets/images.make_grid_image)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, h, w)
    return save_image(make_grid_image(x, nrow=len(images) // rows), path, upscale)
