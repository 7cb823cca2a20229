"""From a text prompt to pictures: ``python -m dualtoken_lite generate MODEL --prompt "a small red star" --out DIR``.

    python -m dualtoken_lite generate data/unified/both --prompt "a small red star on stripes" --num 16 --out samples/
    python -m dualtoken_lite generate data/unified/both --prompt "a blue disc" "a heart on a photo" --guidance 2

A prompt is a caption in the tiny world's words (tinyworld/vocabulary.py); a word outside them is refused with the
vocabulary named. The model's folder names the tokenizer it was trained on (its fingerprint); ``--tokenizer`` is
the folder that decodes (default: the shipped ``data/tokenizer``), and another tokenizer is refused, since codes
only mean something to the tokenizer that made them. Every argument is checked before anything is sampled. Each PNG
is written as soon as its batch is drawn, so Ctrl-C or SIGTERM keeps what was drawn (``samples.json`` lists it);
``grid.png`` shows the first 8 images of each prompt, one row per prompt.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualtoken_lite.datasets.images import make_grid_image, save_image, to_uint8
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import UserError, atomic_path, atomic_write_text
from dualtoken_lite.tinyworld.captions import CLASSIFIED
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR
from dualtoken_lite.unified.sampling import SamplingConfig, draw_stacks
from dualtoken_lite.unified.sequences import PROMPT_LENGTH, prompt_block, word_ids
from dualtoken_lite.unified.token_cache import fingerprint


def check_prompt(prompt: str) -> str:
    """A prompt the model can read, or a UserError: unknown words name the vocabulary; a bare class name ("star", a
    class-conditional generator's prompt) names the caption to write instead."""
    if prompt.strip().lower() in CLASSIFIED["shape"]:
        raise UserError(f"the prompt {prompt!r} is a class name; the unified model takes a caption: write "
                        f"'a {prompt.strip().lower()}' (or e.g. 'a small red {prompt.strip().lower()} on a photo')")
    word_ids(prompt, PROMPT_LENGTH - 2)
    return prompt


def pixel_codes(model, stacks: torch.Tensor) -> torch.Tensor:
    """Sampled stacks (B, N, S) layout ids -> pixel codes (B, H, W, D_pix) for the tokenizer's decoder."""
    g, D = model.layout.grid, model.num_pixel
    return stacks[..., :D].reshape(len(stacks), g, g, D) - model.image_embed.offset[:D]


@torch.no_grad()
def draw(model, tokenizer, prompts: list[str], sampling: SamplingConfig) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Prompts (one per image) -> batch after batch of ``sampling.batch_size``: (stacks (b, N, S) layout ids,
    images uint8 (b, h, w, 3) decoded from all their pixel depths)."""
    sampling.validate()
    rng = torch.Generator().manual_seed(sampling.seed)
    for i in range(0, len(prompts), sampling.batch_size):
        stacks = draw_stacks(model, prompt_block(prompts[i : i + sampling.batch_size]), sampling, rng)
        yield stacks, to_uint8(tokenizer.decode(pixel_codes(model, stacks)), channels_last=True).numpy()


def generate_images(model, tokenizer, prompts: list[str], sampling: SamplingConfig, progress=None
                    ) -> tuple[torch.Tensor, np.ndarray]:
    """Prompts -> (stacks (B, N, S), images uint8 (B, h, w, 3)), all of them at once."""
    stacks, images = [], []
    for s, batch in draw(model, tokenizer, prompts, sampling):
        stacks.append(s)
        images.append(batch)
        if progress is not None:
            progress(len(s))
    return torch.cat(stacks), np.concatenate(images)


def check_tokenizer(model, tokenizer_dir: str | os.PathLike) -> None:
    """Refuse to decode with a tokenizer other than the one the model was trained on."""
    if not Path(tokenizer_dir, "model.safetensors").is_file():
        raise UserError(f"--tokenizer {tokenizer_dir}: no model.safetensors there; give a tokenizer folder such as "
                        f"{TOKENIZER_DIR}")
    trained_on = getattr(model, "tokenizer_id", None)
    if trained_on and trained_on != fingerprint(tokenizer_dir):
        raise UserError(f"the model was trained on tokenizer {trained_on}, but {tokenizer_dir} is "
                        f"{fingerprint(tokenizer_dir)}: pass --tokenizer with the folder it was trained on")


def load_for_commands(folder: str, tokenizer_dir: str, threads: int):
    """The model of a generate / caption command and its tokenizer, each checked, with ``threads`` CPU threads."""
    from dualtoken_lite.model.pretrained import CheckpointError
    from dualtoken_lite.unified.weights import load_model

    if not Path(folder).is_dir():
        raise UserError(f"{folder} is not a folder: give a unified model folder such as data/unified/both")
    if threads < 1:
        raise UserError(f"--threads {threads}: give at least 1")
    torch.set_num_threads(threads)
    try:
        model = load_model(folder)
    except CheckpointError as err:
        raise UserError(str(err)) from None
    check_tokenizer(model, tokenizer_dir)
    return model, DualToken.from_pretrained(tokenizer_dir).eval()


def slug(prompt: str) -> str:
    """A prompt -> a file-name stem: its words joined by underscores."""
    return "_".join(prompt.lower().replace(",", " ").split())[:60]


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from dualtoken_lite.tools.common import writable_folder
    from dualtoken_lite.training.interrupts import Interrupted, StopSignals, signal_name

    defaults = SamplingConfig()
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite generate", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a unified model folder (data/unified/both, or RUN/model)")
    parser.add_argument("--prompt", nargs="+", required=True, help='caption(s) in the tiny world\'s words, e.g. '
                        '"a small red star on stripes"')
    parser.add_argument("--num", type=int, default=16, help="images per prompt")
    parser.add_argument("--out", required=True, help="folder for the PNGs, a grid.png and samples.json")
    parser.add_argument("--tokenizer", default=str(TOKENIZER_DIR), help="the tokenizer folder that decodes")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--guidance", type=float, default=defaults.guidance, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    prompts = [check_prompt(p) for p in args.prompt]  # every argument is checked before anything loads
    if args.num < 1:
        raise UserError(f"--num {args.num}: give at least 1")
    sampling = SamplingConfig(args.temperature, args.top_k, args.guidance, args.seed).validate()
    out = writable_folder(args.out)
    model, tokenizer = load_for_commands(args.model, args.tokenizer, args.threads)
    wanted = [p for p in prompts for _ in range(args.num)]
    out.mkdir(parents=True, exist_ok=True)
    names, firsts = [], {k: [] for k in range(len(prompts))}  # firsts: 8 per prompt, for grid.png
    try:
        with StopSignals(), tqdm(total=len(wanted), desc="generate", unit="image") as bar:
            for _, images in draw(model, tokenizer, wanted, sampling):
                for image in images:
                    k, j = divmod(len(names), args.num)
                    name = f"{k:02d}_{slug(prompts[k])}_{j:03d}.png"
                    with atomic_path(out / name) as tmp:  # a stop never leaves half a PNG
                        Image.fromarray(image).save(tmp, format="PNG")
                    names.append(name)
                    if len(firsts[k]) < 8:
                        firsts[k].append(image)
                bar.update(len(images))
    except Interrupted as stop:
        write_manifest(out, args, names, sampling)
        raise Interrupted(stop.signum, f"stopped by {signal_name(stop.signum)}: {len(names)} of {len(wanted)} "
                                       f"images written to {out} (samples.json lists them)") from None
    cols = min(8, args.num)
    save_sample_grid(np.stack([im for k in firsts for im in firsts[k][:cols]]), len(prompts), out / "grid.png")
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
