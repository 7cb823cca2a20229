"""What the command-line tools share: finding a checkpoint, reading inputs by name, batching (docs/method.md §5).

    model, folder = load_tokenizer("runs/tiny")     # a run folder, its model/ or a checkpoints/step_* folder
    for name, image in iter_images(["a.jpg", "photos/", "shards/val-{0000..0003}.tar"]):
        ...                                         # image: RGB PIL image, or a BadImageError naming `name`

A CKPT argument is either a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) or a training
run folder written by ``python -m dualtoken_lite.train --out RUN``: then ``RUN/model`` (the final weights) if it
exists, else the newest complete ``RUN/checkpoints/step_*``.

Inputs are image files, folders (searched recursively, sorted; links as ``datasets.sources.walk_files`` follows
them) or WebDataset shards (a ``.tar`` path or a brace pattern). Each real file is read once, however many inputs
or links lead to it. Every image keeps a name (the file path, or ``shard:key``) so a bad one is reported by name and
skipped, never fatal: ``iter_images`` yields the error in place of the image.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image

from dualtoken_lite.datasets.images import BadImageError, decode_image, load_image
from dualtoken_lite.datasets.sources import expand_shards, file_identity, index_shard, list_folder, read_bytes
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.pretrained import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from dualtoken_lite.settings import UserError
from dualtoken_lite.training.checkpoints import latest_checkpoint


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A save_pretrained folder for ``path``: itself, RUN/model, or the newest RUN/checkpoints/step_*."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        return path
    if (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    latest = latest_checkpoint(path / "checkpoints") if (path / "checkpoints").is_dir() else None
    if latest is not None:
        return latest
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    raise CheckpointError(
        f"{str(path)!r} is neither a model folder ({CONFIG_NAME} + {WEIGHTS_NAME}, as written by save_pretrained) "
        "nor a training run (RUN/model/ or RUN/checkpoints/step_*/); pass one of those"
    )


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, the folder it came from) for a CKPT argument."""
    folder = resolve_checkpoint(path)
    return DualToken.from_pretrained(folder, device=device).eval(), folder


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise the named device."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def writable_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder that exists or can be made and written, or a UserError before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {path}: {existing} is not a writable folder; give another {flag}")
    return path


def writable_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a file whose folder exists and can be written, or a UserError before any work."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UserError(f"{flag} {path}: {path.parent} is not a writable folder; give another {flag}")
    return path


def is_shard_source(text: str) -> bool:
    """A WebDataset shard path or brace pattern (as opposed to an image file or folder)."""
    return text.endswith(".tar") or "{" in text or "::" in text


def iter_images(inputs: Iterable[str | os.PathLike]) -> Iterator[tuple[str, Image.Image | BadImageError]]:
    """(name, RGB image) for every image of every input, in order, each real file once; (name, BadImageError) for a
    bad one."""
    seen: set = set()  # identities of the files (images, shards) already read
    repeats = 0
    for item in inputs:
        text = os.fspath(item)
        if os.path.isdir(text):
            files = list_folder(text).units
        elif is_shard_source(text):
            try:
                files = expand_shards(text)
            except (FileNotFoundError, ValueError) as e:
                yield text, BadImageError(text, str(e))
                continue
        else:
            files = [text]
        for file in files:
            if not first_time(file, seen):
                repeats += 1
            elif is_shard_source(file):
                yield from _iter_shard(file)
            else:
                yield _load_file(file)
    if repeats:
        print(f"note: {repeats} input path(s) led to a file already read (named twice, or through a link); each file "
              "was read once", file=sys.stderr)


def first_time(path: str, seen: set) -> bool:
    """Whether the file ``path`` leads to is not in ``seen`` yet (it is added); a missing file counts as new."""
    try:
        identity = file_identity(path)
    except OSError:
        return True
    if identity in seen:
        return False
    seen.add(identity)
    return True


def _load_file(path: str) -> tuple[str, Image.Image | BadImageError]:
    try:
        return path, load_image(path)
    except FileNotFoundError as e:
        return path, BadImageError(path, str(e))
    except BadImageError as e:
        return path, e


def _iter_shard(shard: str) -> Iterator[tuple[str, Image.Image | BadImageError]]:
    for ref in index_shard(shard, 0):
        name = f"{shard}:{ref.key}"
        if ref.error is not None:
            yield name, BadImageError(name, ref.error)
            continue
        try:
            yield name, decode_image(read_bytes(shard, *ref.image), name)
        except (BadImageError, EOFError) as e:
            yield name, e if isinstance(e, BadImageError) else BadImageError(name, str(e))


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1; got {size}")
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def output_stem(name: str, taken: set[str]) -> str:
    """A file-name-safe stem for an input name, unique among ``taken`` (which it joins): 'a/b/cat.jpg' -> 'cat'."""
    base = name.rsplit(":", 1)[-1] if ":" in name and not os.path.exists(name) else name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(base).stem).strip("._") or "image"
    unique, k = stem, 2
    while unique in taken:
        unique, k = f"{stem}_{k}", k + 1
    taken.add(unique)
    return unique
