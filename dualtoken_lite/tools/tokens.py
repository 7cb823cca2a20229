"""Images <-> DualToken codes from the command line, in files a language-model pipeline reads.

    python -m dualtoken_lite tokens encode runs/tiny photos/ a.jpg 'shards/val-{0000..0003}.tar' --out codes.safetensors
    python -m dualtoken_lite tokens decode runs/tiny codes.safetensors --out recon/     # NAME.png per image

The token layout (which id means which code of which position) is ``model/token_layout.py``.

Files written by ``encode`` (codes are stored as int32; they load back as int64):
    .safetensors   pixel_codes (B, H, W, D_pix), semantic_codes (B, H, W, D_sem) when present, lm_tokens (B, L);
                   metadata: names (JSON list of the inputs), layout (JSON of TokenLayout), checkpoint
    .npy           lm_tokens (B, L) only: the codes come back through ``from_lm_sequence`` with the layout of the
                   checkpoint given to ``decode`` (names are lost: images are numbered)
    .tar           WebDataset shard(s): one sample per image, key 00000000, 00000001, ... with members
                   KEY.pixel.npy (H, W, D_pix), KEY.semantic.npy, KEY.tokens.npy (L,) and KEY.json
                   ({"name", "layout"}); a path with a %-pattern (codes-%04d.tar) starts a new shard every
                   --shard-size images
Decoding a file gives exactly ``model.decode(pixel_codes)`` (tests: equal to the eval-mode forward's reconstruction).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from dualtoken_lite.datasets.images import preprocess, to_pil
from dualtoken_lite.datasets.sources import expand_shards, read_shard
from dualtoken_lite.model.token_layout import TokenLayout, from_lm_sequence, to_lm_sequence
from dualtoken_lite.settings import UserError, os_error_of, run_cli, write_failed
from dualtoken_lite.tools.common import (
    batched,
    iter_images,
    load_tokenizer,
    output_stem,
    pick_device,
    writable_file,
    writable_folder,
)


# ------------------------------------------------------------------------------------------- codes <-> files
@torch.no_grad()
def encode_inputs(model, inputs: list[str], batch_size: int = 32, progress: bool = False
                  ) -> tuple[list[str], Tensor, Tensor | None, list[tuple[str, str]]]:
    """Images of ``inputs`` -> (names, pixel_codes (B, H, W, D), semantic_codes or None, [(bad name, reason)])."""
    device, size = next(model.parameters()).device, model.cfg.backbone.image_size
    layout = TokenLayout.from_config(model.cfg)
    names, pixel, semantic, failed = [], [], [], []
    bar = tqdm(desc="encode", unit="img", disable=not progress)
    for chunk in batched(iter_images(inputs), batch_size):
        good = [(n, im) for n, im in chunk if not isinstance(im, Exception)]
        failed += [(n, str(im)) for n, im in chunk if isinstance(im, Exception)]
        if good:
            x = torch.stack([preprocess(im, size) for _, im in good]).to(device)  # (b, 3, h, w)
            p, s = model.encode(x)
            names += [n for n, _ in good]
            pixel.append(p.cpu())
            if layout.semantic_depth:
                semantic.append(s.cpu())
        bar.update(len(chunk))
    bar.close()
    if not names:
        raise CodesFileError(f"no image could be read from {inputs}: " + "; ".join(f"{n}: {r}" for n, r in failed[:3]))
    return names, torch.cat(pixel), torch.cat(semantic) if semantic else None, failed


CODE_FILES = (".safetensors", ".npy", ".tar")  # what `encode` writes, by --out's suffix


def save_codes(path: str | Path, names: list[str], pixel: Tensor, semantic: Tensor | None, layout: TokenLayout,
               checkpoint: str = "", shard_size: int = 10000) -> list[Path]:
    """Write codes as .safetensors, .npy (lm_tokens) or WebDataset .tar shard(s); returns the files written."""
    path = Path(path)
    tokens = to_lm_sequence(pixel, semantic, layout)  # (B, L)
    if path.suffix == ".safetensors":
        tensors = {"pixel_codes": pixel.int().contiguous(), "lm_tokens": tokens.int().contiguous()}
        if semantic is not None:
            tensors["semantic_codes"] = semantic.int().contiguous()
        meta = {"names": json.dumps(names), "layout": json.dumps(asdict(layout)), "checkpoint": str(checkpoint)}
        save_file(tensors, str(path), metadata=meta)
        return [path]
    if path.suffix == ".npy":
        np.save(path, tokens.int().numpy())
        return [path]
    if path.suffix == ".tar":
        return _write_shards(path, names, pixel, semantic, tokens, layout, shard_size)
    raise CodesFileError(f"--out {str(path)!r}: the file type must be .safetensors, .npy or .tar")


def _npy_bytes(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def _write_shards(path, names, pixel, semantic, tokens, layout, shard_size) -> list[Path]:
    """One WebDataset sample per image; a %-pattern in the name splits into shards of ``shard_size`` images."""
    import webdataset as wds

    layout_dict = asdict(layout)
    pattern = "%" in path.name
    written = sorted({Path(str(path) % (i // shard_size)) for i in range(len(names))}) if pattern else [path]
    writer = wds.ShardWriter(str(path), maxcount=shard_size, verbose=0) if pattern else wds.TarWriter(str(path))
    with writer:
        for i, name in enumerate(names):
            sample = {"__key__": f"{i:08d}", "pixel.npy": _npy_bytes(pixel[i].int().numpy()),
                      "tokens.npy": _npy_bytes(tokens[i].int().numpy()),
                      "json": json.dumps({"name": name, "layout": layout_dict}).encode()}
            if semantic is not None:
                sample["semantic.npy"] = _npy_bytes(semantic[i].int().numpy())
            writer.write(sample)
    return written


def same_codes(a: TokenLayout, b: TokenLayout) -> bool:
    """Do two layouts describe the same code maps (they may differ in the <boi>/<eoi> specials only)?"""
    return replace(a, specials=False) == replace(b, specials=False)


def load_codes(path: str | Path, layout: TokenLayout) -> tuple[list[str], Tensor, Tensor | None]:
    """A file written by ``save_codes`` -> (names, pixel_codes (B, H, W, D) long, semantic_codes or None)."""
    text = str(path)
    if text.endswith(".safetensors"):
        with safe_open(text, framework="pt") as f:
            meta, keys = f.metadata() or {}, set(f.keys())
            if "pixel_codes" not in keys:
                raise CodesFileError(f"{text} holds no pixel_codes: was it written by `python -m dualtoken_lite tokens encode`?")
            stored = json.loads(meta.get("layout", "null"))
            if stored is not None and not same_codes(TokenLayout(**stored), layout):
                raise CodesFileError(f"{text} was written with layout {stored}, but the checkpoint has {asdict(layout)}; "
                                 "decode it with the checkpoint that encoded it")
            pixel = integer_codes(f.get_tensor("pixel_codes"), "pixel_codes", text)
            semantic = integer_codes(f.get_tensor("semantic_codes"), "semantic_codes", text) \
                if "semantic_codes" in keys else None
        names = json.loads(meta.get("names", "null")) or [f"{i:08d}" for i in range(len(pixel))]
        if not isinstance(names, list) or len(names) != len(pixel):
            raise CodesFileError(f"{text}: its 'names' metadata lists {len(names) if isinstance(names, list) else names!r}"
                                 f" names for {len(pixel)} code maps; the file is damaged (re-encode the images)")
        if semantic is not None and len(semantic) != len(pixel):
            raise CodesFileError(f"{text}: {len(pixel)} pixel code maps but {len(semantic)} semantic ones")
        return names, pixel, semantic
    if text.endswith(".npy"):
        tokens = integer_codes(torch.from_numpy(np.load(text)), "lm_tokens", text)
        wrapped = replace(layout, specials=True)  # the file says whether it holds <boi>/<eoi>: by its length
        pixel, semantic = from_lm_sequence(tokens, wrapped if tokens.shape[-1] == wrapped.length else
                                           replace(layout, specials=False))
        return [f"{i:08d}" for i in range(len(pixel))], pixel, semantic
    if text.endswith(".tar") or "{" in text:
        return _read_shards(text, layout)
    raise CodesFileError(f"{text!r}: expected a .safetensors, .npy or .tar file written by "
                         "`python -m dualtoken_lite tokens encode`")


class CodesFileError(UserError, ValueError):
    """A codes file is not what ``tokens encode`` writes: the message names the field and what was found."""


def integer_codes(codes: Tensor, field: str, source: str) -> Tensor:
    """Codes as int64; float or bool codes are refused (truncating them would decode invented data)."""
    if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
        raise CodesFileError(f"{source}: {field} has dtype {codes.dtype}; codes are integers (int32 or int64 as "
                             "written by `tokens encode`)")
    return codes.long()


def _read_shards(pattern: str, layout: TokenLayout) -> tuple[list[str], Tensor, Tensor | None]:
    samples = {key: members for shard in expand_shards(pattern) for key, members in read_shard(shard)}
    names, pixel, semantic = [], [], []
    for key in sorted(samples):
        s = samples[key]
        missing = [m for m in ("json", "pixel.npy") if m not in s]
        if missing:
            raise CodesFileError(f"sample {key} of {pattern} has no {' or '.join(missing)} member; "
                                 "shards written by `tokens encode` hold KEY.json and KEY.pixel.npy per image")
        info = json.loads(s["json"])
        if not same_codes(TokenLayout(**info["layout"]), layout):
            raise CodesFileError(f"sample {key} of {pattern} was written with another layout; use its checkpoint")
        names.append(info["name"])
        pixel.append(integer_codes(torch.from_numpy(np.load(io.BytesIO(s["pixel.npy"]))), "pixel.npy", key))
        if "semantic.npy" in s:
            semantic.append(integer_codes(torch.from_numpy(np.load(io.BytesIO(s["semantic.npy"]))), "semantic.npy",
                                          key))
    if not names:
        raise CodesFileError(f"no samples in {pattern}")
    return names, torch.stack(pixel), torch.stack(semantic) if semantic else None


@torch.no_grad()
def decode_codes(model, pixel: Tensor, batch_size: int = 32) -> Tensor:
    """pixel_codes (B, H, W, D) -> reconstructions (B, 3, h, w) in [-1, 1], batch by batch (``model.decode``)."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(pixel[i : i + batch_size].to(device)).cpu()
                      for i in range(0, len(pixel), batch_size)])


# ------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite tokens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="images, folders or shards -> codes file")
    enc.add_argument("checkpoint", help="model folder (save_pretrained) or training run folder")
    enc.add_argument("inputs", nargs="+", help="image files, folders, .tar shards or brace patterns")
    enc.add_argument("--out", required=True, help="FILE.safetensors, FILE.npy, FILE.tar or FILE-%%04d.tar")
    enc.add_argument("--shard-size", type=int, default=10000, help="images per shard with a %%-pattern --out")
    dec = sub.add_parser("decode", help="codes file -> reconstructed images DIR/NAME.png")
    dec.add_argument("checkpoint", help="the model folder or run that encoded the file")
    dec.add_argument("codes", help="a file written by `encode`")
    dec.add_argument("--out", required=True, help="output folder")
    enc.add_argument("--specials", action="store_true", help="wrap each image's lm_tokens in <boi> ... <eoi>")
    for p in (enc, dec):
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or getattr(args, "shard_size", 1) < 1:
        raise UserError("--batch-size and --shard-size must be >= 1")
    if args.command == "encode":  # every argument checked before any image is read
        if Path(args.out).suffix not in CODE_FILES:
            raise CodesFileError(f"--out {args.out!r}: the file type must be .safetensors, .npy or .tar")
        writable_file(args.out)
    else:
        if not Path(args.codes).exists() and "{" not in args.codes:
            raise CodesFileError(f"{args.codes} does not exist: give a file written by `tokens encode`")
        writable_folder(args.out)
    model, folder = load_tokenizer(args.checkpoint, pick_device(args.device))
    layout = TokenLayout.from_config(model.cfg, specials=getattr(args, "specials", False))
    if args.command == "encode":
        names, pixel, semantic, failed = encode_inputs(model, args.inputs, args.batch_size, progress=True)
        for name, reason in failed:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        try:
            files = save_codes(args.out, names, pixel, semantic, layout, str(folder), args.shard_size)
        except Exception as err:  # a full disk: one line naming the file
            cause = os_error_of(err)
            if cause is None:
                raise
            raise write_failed(args.out, cause) from None
        print(f"encoded {len(names)} images ({len(failed)} skipped) -> {', '.join(map(str, files))}: "
              f"{layout.length} tokens each, vocabulary {layout.vocab_size}")
        return 1 if failed else 0
    names, pixel, _ = load_codes(args.codes, layout)
    try:  # the right shape for this model's grid and depth, ids inside its codebook
        model.check_codes(pixel, model.pixel_quantizer, "pixel_codes")
    except ValueError as err:
        raise CodesFileError(f"{args.codes}: {err}; decode it with the checkpoint that encoded it") from None
    images = decode_codes(model, pixel, args.batch_size)
    out, taken = Path(args.out), set()
    out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        to_pil(image).save(out / f"{output_stem(name, taken)}.png")
    print(f"decoded {len(names)} images -> {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
