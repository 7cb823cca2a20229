"""The tiny world on disk: plain WebDataset tar shards of PNG images and class labels (docs/method.md §5, §9).

    paths = ensure_tinyworld()                     # {"train": [...], "eval": [...]}, written if missing
    images, labels = load_split(paths["eval"])    # (B, h, w, 3) uint8, (B,) int64
    resolve_data("tinyworld-eval")                # a data argument: the tiny world's names -> shard paths

Command line: ``python -m dualtoken_lite tinyworld --out data/tinyworld`` writes the shards.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dualtoken_lite.datasets.sources import read_shard
from dualtoken_lite.settings import UserError, atomic_path
from dualtoken_lite.tinyworld.drawing import SPLITS, TinyWorldConfig, make_sample, split_id
from dualtoken_lite.tinyworld.paths import SOURCE_NAMES, TINYWORLD_ROOT


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (h, w, 3) image (compression level fixed, so the bytes are repeatable)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def shard_paths(root: str | os.PathLike, split: str, count: int, shard_size: int) -> list[str]:
    """The file names of a split's shards: ``{root}/{split}-{shard:04d}.tar``."""
    shards = -(-count // shard_size)
    return [os.path.join(root, f"{split}-{k:04d}.tar") for k in range(shards)]


def write_shards(root: str | os.PathLike, split: str, count: int, shard_size: int = 2048,
                 cfg: TinyWorldConfig | None = None, workers: int | None = None) -> list[str]:
    """Write samples 0 .. count-1 of a split as plain WebDataset tar shards (``png`` and ``cls`` per sample).

    Plain tars (the PNGs inside are compressed already) let the loader seek straight to any sample. Tar members
    carry fixed times and names, so the same arguments give identical bytes, whichever process writes a shard:
    ``workers`` processes (default: one per CPU core) write the shards side by side.
    """
    os.makedirs(root, exist_ok=True)
    paths = shard_paths(root, split, count, shard_size)
    jobs = [(path, split, range(k * shard_size, min(count, (k + 1) * shard_size)), cfg) for k, path in enumerate(paths)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            pool.starmap(write_one_shard, jobs)
    else:
        for job in jobs:
            write_one_shard(*job)
    return paths


def sample_key(split: str, index: int) -> str:
    """The name of sample ``index`` of ``split`` inside the shards: ``{split}-{index:07d}``."""
    return f"{split}-{index:07d}"


def parse_key(key: str) -> tuple[str, int] | None:
    """A shard key back to (split, index); None for a name that is not a tiny-world sample's."""
    split, _, index = key.rpartition("-")
    return (split, int(index)) if split in SPLITS and index.isdigit() and len(index) == 7 else None


def write_one_shard(path: str, split: str, indices: range, cfg: TinyWorldConfig | None = None) -> None:
    """Samples ``indices`` of a split into the shard ``path``, written to a temporary name and renamed into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in indices:
            image, meta = make_sample(i, split, cfg)
            key = sample_key(split, i)
            for ext, payload in (("png", encode_png(image)), ("cls", str(meta["label"]).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                tar.addfile(info, io.BytesIO(payload))


def write_split_shard(folder: str | os.PathLike, split: str, count: int) -> str:
    """Samples 0..count-1 of a split as ONE shard, ``{folder}/{split}-0000.tar`` (the notebooks' small sets)."""
    return write_shards(folder, split, count, shard_size=count)[0]


# What the project ships (eval, committed) and regenerates on demand (train).
DEFAULT_COUNTS = {"train": 32768, "eval": 1024}
DEFAULT_SHARD_SIZE = 2048


def ensure_tinyworld(root: str | os.PathLike = TINYWORLD_ROOT, splits: tuple[str, ...] = ("train", "eval"),
                     counts: dict[str, int] | None = None, shard_size: int = DEFAULT_SHARD_SIZE
                     ) -> dict[str, list[str]]:
    """The shard paths of each split under ``root``, writing any split whose shards are missing."""
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    paths = {}
    for split in splits:
        split_id(split)
        paths[split] = shard_paths(root, split, counts[split], shard_size)
        if not all(os.path.exists(p) for p in paths[split]):
            write_shards(root, split, counts[split], shard_size)
    return paths


def read_shards(paths: list[str]) -> Iterator[tuple[np.ndarray, dict]]:
    """Read samples back from shards in key order: (image (h, w, 3) uint8, {"key": ..., "label": ...})."""
    for path in paths:
        for key, members in sorted(read_shard(path)):
            image = np.asarray(Image.open(io.BytesIO(members["png"])).convert("RGB"))
            yield image, {"key": key, "label": int(members["cls"])}


def load_split(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All images (B, h, w, 3) uint8 and labels (B,) int64 of a list of shards."""
    samples = list(read_shards(paths))
    if not samples:
        raise FileNotFoundError(f"no samples in shards {paths}; write them with ensure_tinyworld()")
    return np.stack([s[0] for s in samples]), np.array([s[1]["label"] for s in samples], dtype=np.int64)


def resolve_data(source: str | list, is_main: bool = True, barrier: Callable[[], None] = lambda: None
                 ) -> str | list:
    """A data argument -> what the loader reads: the tiny world's names become its shard paths.

    Under torchrun only the main process writes missing shards (``is_main``); ``barrier`` makes the others wait
    for it before they look.
    """
    if not isinstance(source, str) or source not in SOURCE_NAMES:
        return source
    split = SOURCE_NAMES[source]
    if is_main:
        ensure_tinyworld(str(TINYWORLD_ROOT), splits=(split,))
    barrier()
    return ensure_tinyworld(str(TINYWORLD_ROOT), splits=(split,))[split]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite tinyworld", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(TINYWORLD_ROOT), help="folder of the shards")
    parser.add_argument("--splits", nargs="+", default=["train", "eval"], choices=sorted(SPLITS))
    parser.add_argument("--train-count", type=int, default=DEFAULT_COUNTS["train"])
    parser.add_argument("--eval-count", type=int, default=DEFAULT_COUNTS["eval"])
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    args = parser.parse_args(argv)
    if min(args.train_count, args.eval_count, args.shard_size) < 1:
        raise UserError("--train-count, --eval-count and --shard-size must be >= 1")
    existing = next(p for p in [Path(args.out), *Path(args.out).parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"--out {args.out}: {existing} is not a writable folder")
    counts = {"train": args.train_count, "eval": args.eval_count}
    paths = ensure_tinyworld(args.out, tuple(args.splits), counts, args.shard_size)
    for split, files in paths.items():
        size = sum(os.path.getsize(p) for p in files) / 2**20
        print(f"{split}: {counts[split]} samples in {len(files)} shards, {size:.1f} MiB under {args.out}")


if __name__ == "__main__":
    main()
