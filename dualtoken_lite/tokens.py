"""Images <-> DualToken codes from the command line, and THE token layout a multimodal language model consumes.

    python -m dualtoken_lite.tokens encode runs/tiny photos/ a.jpg 'shards/val-{0000..0003}.tar' --out codes.safetensors
    python -m dualtoken_lite.tokens decode runs/tiny codes.safetensors --out recon/     # NAME.png per image

An image gives two code maps (SPEC §2): pixel codes (B, H, W, D_pix) and semantic codes (B, H, W, D_sem),
27 x 27 x 8 each at paper scale. A language model reads them as ONE sequence per image:

    [<boi>]  p(0,0,1) .. p(0,0,D_pix)  s(0,0,1) .. s(0,0,D_sem)   p(0,1,1) ..   ...   s(H-1,W-1,D_sem)  [<eoi>]
              '------- position (row 0, col 0) -------------'   '-- (0, 1) ..

    * raster order: positions row-major over the H x W grid (row r, column c -> n = r * W + c);
    * per position, the pixel codes of depths 1..D_pix, then the semantic codes of depths 1..D_sem
      (depth fastest: coarse to fine, as a depth transformer would emit them);
    * L = N * (D_pix + D_sem) tokens (+ 2 with the <boi>/<eoi> specials): 11,664 (+2) for so400m-384.

Vocabulary (``TokenLayout``): ids never collide across codebooks.

    pixel     [0, V_pix)                       V_pix = K_pix        (one codebook shared by all depths, SPEC §2)
    semantic  [V_pix, V_pix + V_sem)           V_sem = K_sem
    <boi>, <eoi>   V_pix + V_sem, V_pix + V_sem + 1   (with ``specials``)

    token = offset(branch) + code                  shared codebook: a code means the same vector at every depth
    token = offset(branch) + (d - 1) * K + code    per-depth codebooks (shared_codebook=False): V = D * K

With so400m-384: pixel ids 0..16383, semantic ids 16384..32767, <boi> 32768, <eoi> 32769. A model with no
semantic branch, or the shared-quantizer ablation (whose semantic codes ARE its pixel codes), has D_sem = 0.

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
import tarfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from .cli import batched, iter_images, load_tokenizer, output_stem, pick_device
from .images import preprocess, to_pil
from .sources import expand_shards


@dataclass(frozen=True)
class TokenLayout:
    """Where each code of an image goes in the language model's sequence and vocabulary (module docstring)."""

    grid: int  # H = W, tokens per side
    pixel_depth: int  # D_pix, pixel codes per position
    pixel_codebook_size: int  # K_pix
    pixel_shared: bool  # one pixel codebook for all depths (ids shared) or one per depth
    semantic_depth: int = 0  # D_sem, semantic codes per position (0: no separate semantic codes)
    semantic_codebook_size: int = 0  # K_sem
    semantic_shared: bool = True  # one semantic codebook for all depths
    specials: bool = False  # wrap each image in <boi> ... <eoi>

    @classmethod
    def from_config(cls, cfg, specials: bool = False) -> TokenLayout:
        """The layout of a ModelConfig (D_sem = 0 without a separate semantic quantizer)."""
        p, s = cfg.pixel_quantizer, cfg.semantic_quantizer
        has_semantic = cfg.semantic_layer is not None and not cfg.shared_quantizer
        return cls(cfg.backbone.grid, p.depth, p.codebook_size, p.shared_codebook,
                   s.depth if has_semantic else 0, s.codebook_size if has_semantic else 0,
                   s.shared_codebook, specials)

    @property
    def pixel_vocab(self) -> int:
        return self.pixel_codebook_size * (1 if self.pixel_shared else self.pixel_depth)

    @property
    def semantic_offset(self) -> int:
        return self.pixel_vocab

    @property
    def semantic_vocab(self) -> int:
        return self.semantic_codebook_size * (1 if self.semantic_shared else self.semantic_depth)

    @property
    def boi(self) -> int:
        return self.pixel_vocab + self.semantic_vocab

    @property
    def eoi(self) -> int:
        return self.boi + 1

    @property
    def vocab_size(self) -> int:
        return self.boi + (2 if self.specials else 0)

    @property
    def length(self) -> int:
        """L, tokens per image."""
        return self.grid**2 * (self.pixel_depth + self.semantic_depth) + (2 if self.specials else 0)


def depth_offsets(codebook_size: int, depth: int, shared: bool, device=None) -> Tensor:
    """(D,) id offset of each depth inside a branch: zeros for a shared codebook, d * K for per-depth ones."""
    steps = torch.zeros(depth, dtype=torch.long, device=device) if shared else torch.arange(depth, device=device)
    return steps * codebook_size


def _check_map(codes: Tensor, layout: TokenLayout, depth: int, size: int, name: str) -> None:
    want = (layout.grid, layout.grid, depth)
    if not torch.is_tensor(codes) or codes.dim() != 4 or tuple(codes.shape[1:]) != want:
        got = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
        raise ValueError(f"{name} must have shape (B, {want[0]}, {want[1]}, {want[2]}); got {got}")
    if codes.is_floating_point() or (codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size)):
        raise ValueError(f"{name} must be integer codes in [0, {size}); got {codes.dtype} "
                         f"in [{int(codes.min())}, {int(codes.max())}]" if codes.numel() else f"{name} is empty")


def to_lm_sequence(pixel_codes: Tensor, semantic_codes: Tensor | None, layout: TokenLayout) -> Tensor:
    """Code maps (B, H, W, D_pix) and (B, H, W, D_sem) -> token ids (B, L) in the documented layout."""
    _check_map(pixel_codes, layout, layout.pixel_depth, layout.pixel_codebook_size, "pixel_codes")
    dev = pixel_codes.device
    parts = [pixel_codes.long() + depth_offsets(layout.pixel_codebook_size, layout.pixel_depth,
                                                 layout.pixel_shared, dev)]  # (B, H, W, D_pix)
    if layout.semantic_depth:
        if semantic_codes is None:
            raise ValueError("this layout has semantic codes (semantic_depth > 0) but semantic_codes is None")
        _check_map(semantic_codes, layout, layout.semantic_depth, layout.semantic_codebook_size, "semantic_codes")
        parts.append(semantic_codes.long() + layout.semantic_offset + depth_offsets(
            layout.semantic_codebook_size, layout.semantic_depth, layout.semantic_shared, dev))
    tokens = torch.cat(parts, dim=-1).flatten(1)  # (B, H, W, D_pix + D_sem) -> (B, L): raster, then depth
    if layout.specials:
        B = tokens.shape[0]
        tokens = torch.cat([tokens.new_full((B, 1), layout.boi), tokens, tokens.new_full((B, 1), layout.eoi)], 1)
    return tokens


def from_lm_sequence(tokens: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor | None]:
    """Token ids (B, L) -> (pixel_codes (B, H, W, D_pix), semantic_codes (B, H, W, D_sem) or None)."""
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.shape[1] != layout.length:
        got = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(f"tokens must have shape (B, {layout.length}) for this layout; got {got}")
    tokens = tokens.long()
    if layout.specials:
        if not (bool((tokens[:, 0] == layout.boi).all()) and bool((tokens[:, -1] == layout.eoi).all())):
            raise ValueError(f"each sequence must start with <boi>={layout.boi} and end with <eoi>={layout.eoi}")
        tokens = tokens[:, 1:-1]
    Dp, Ds, g = layout.pixel_depth, layout.semantic_depth, layout.grid
    grid = tokens.reshape(tokens.shape[0], g, g, Dp + Ds)  # (B, H, W, D_pix + D_sem)
    pixel = grid[..., :Dp] - depth_offsets(layout.pixel_codebook_size, Dp, layout.pixel_shared, tokens.device)
    _check_ids(pixel, layout.pixel_codebook_size, "pixel")
    if not Ds:
        return pixel, None
    semantic = grid[..., Dp:] - layout.semantic_offset - depth_offsets(
        layout.semantic_codebook_size, Ds, layout.semantic_shared, tokens.device)
    _check_ids(semantic, layout.semantic_codebook_size, "semantic")
    return pixel, semantic


def _check_ids(codes: Tensor, size: int, branch: str) -> None:
    """Raise naming the first position whose token is outside its branch/depth id range."""
    bad = (codes < 0) | (codes >= size)
    if bool(bad.any()):
        b, r, c, d = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"token at image {b}, row {r}, column {c}, {branch} depth {d + 1} is outside the "
                         f"{branch} id range of that depth: is the sequence from a model with this layout?")


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
        raise ValueError(f"no image could be read from {inputs}: " + "; ".join(f"{n}: {r}" for n, r in failed[:3]))
    return names, torch.cat(pixel), torch.cat(semantic) if semantic else None, failed


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
    raise ValueError(f"--out {str(path)!r}: the file type must be .safetensors, .npy or .tar")


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
                raise ValueError(f"{text} holds no pixel_codes: was it written by `dualtoken_lite.tokens encode`?")
            stored = json.loads(meta.get("layout", "null"))
            if stored is not None and not same_codes(TokenLayout(**stored), layout):
                raise ValueError(f"{text} was written with layout {stored}, but the checkpoint has {asdict(layout)}; "
                                 "decode it with the checkpoint that encoded it")
            pixel = f.get_tensor("pixel_codes").long()
            semantic = f.get_tensor("semantic_codes").long() if "semantic_codes" in keys else None
        names = json.loads(meta.get("names", "null")) or [f"{i:08d}" for i in range(len(pixel))]
        return names, pixel, semantic
    if text.endswith(".npy"):
        tokens = torch.from_numpy(np.load(text))
        wrapped = replace(layout, specials=True)  # the file says whether it holds <boi>/<eoi>: by its length
        pixel, semantic = from_lm_sequence(tokens, wrapped if tokens.shape[-1] == wrapped.length else
                                           replace(layout, specials=False))
        return [f"{i:08d}" for i in range(len(pixel))], pixel, semantic
    if text.endswith(".tar") or "{" in text:
        return _read_shards(text, layout)
    raise ValueError(f"{text!r}: expected a .safetensors, .npy or .tar file written by `dualtoken_lite.tokens encode`")


def _read_shards(pattern: str, layout: TokenLayout) -> tuple[list[str], Tensor, Tensor | None]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in expand_shards(pattern):
        with tarfile.open(shard, "r:") as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    names, pixel, semantic = [], [], []
    for key in sorted(samples):
        s = samples[key]
        info = json.loads(s["json"])
        if not same_codes(TokenLayout(**info["layout"]), layout):
            raise ValueError(f"sample {key} of {pattern} was written with another layout; use its checkpoint")
        names.append(info["name"])
        pixel.append(torch.from_numpy(np.load(io.BytesIO(s["pixel.npy"]))).long())
        if "semantic.npy" in s:
            semantic.append(torch.from_numpy(np.load(io.BytesIO(s["semantic.npy"]))).long())
    if not names:
        raise ValueError(f"no samples in {pattern}")
    return names, torch.stack(pixel), torch.stack(semantic) if semantic else None


@torch.no_grad()
def decode_codes(model, pixel: Tensor, batch_size: int = 32) -> Tensor:
    """pixel_codes (B, H, W, D) -> reconstructions (B, 3, h, w) in [-1, 1], batch by batch (``model.decode``)."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(pixel[i : i + batch_size].to(device)).cpu()
                      for i in range(0, len(pixel), batch_size)])


# ------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite.tokens", description=__doc__.split("\n")[0])
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
    model, folder = load_tokenizer(args.checkpoint, pick_device(args.device))
    layout = TokenLayout.from_config(model.cfg, specials=getattr(args, "specials", False))
    if args.command == "encode":
        names, pixel, semantic, failed = encode_inputs(model, args.inputs, args.batch_size, progress=True)
        for name, reason in failed:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        files = save_codes(args.out, names, pixel, semantic, layout, str(folder), args.shard_size)
        print(f"encoded {len(names)} images ({len(failed)} skipped) -> {', '.join(map(str, files))}: "
              f"{layout.length} tokens each, vocabulary {layout.vocab_size}")
        return 1 if failed else 0
    names, pixel, _ = load_codes(args.codes, layout)
    images = decode_codes(model, pixel, args.batch_size)
    out, taken = Path(args.out), set()
    out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        to_pil(image).save(out / f"{output_stem(name, taken)}.png")
    print(f"decoded {len(names)} images -> {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
