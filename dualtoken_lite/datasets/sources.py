"""Where samples come from: WebDataset shards and image folders, resolved into an index of sample references.

A *source* is one of
    "shards/train-{0000..0009}.tar"   a brace pattern of WebDataset tar shards (``::`` joins several patterns)
    "shards/one.tar" or a list        explicit shards
    "photos/"                         a folder of images, searched recursively; first-level subfolders can be
                                      class labels (sorted names -> 0, 1, ...), as torchvision's ImageFolder.
                                      Links leading outside the folder are followed, links leading back inside
                                      are skipped, and each real file is listed once (``walk_files``): a link
                                      loop (``sub/up -> ..``) or two links to one image never repeat a sample
A source is split into *units*: one unit per shard, or one per image file in a folder.

WebDataset format (docs/method.md §5): a tar whose consecutive members sharing a key (the path up to the first dot of the
file name) form one sample: ``000123.jpg``, ``000123.cls``, ``000123.txt`` -> key ``000123``. The image is the
member with extension jpg, jpeg, png or webp (any case; the first present in that order); ``cls`` holds an integer
label as text; captions and everything else are ignored.

``index_shard`` reads only the tar headers (seeking over the data), so indexing is cheap and a sample's bytes
are read later, only by the worker that decodes it. A shard that breaks off (bad header, cut file) keeps the
samples before the break and ends with one reference marked with the error, so the loss is counted once.
Shards must be plain (uncompressed) local ``.tar`` files.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from dualtoken_lite.settings import MissingFile, UserError

SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # image members of a shard sample, in order of preference
FOLDER_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
LABEL_EXT = "cls"  # the WebDataset convention for an integer class label


class DataSourceError(UserError, ValueError):
    """A data source exists but cannot be read as shards or an image folder; the message says why."""


class Ref(NamedTuple):
    """A reference to one raw sample: enough to read it later, or the reason it is already known to be bad."""

    unit: int  # index of the shard or file in Source.units
    key: str  # sample key in the shard, or the file's path relative to the folder
    image: tuple[int, int] | None  # (offset, size) of the image member in the shard; None for folder files
    label: tuple[int, int] | int | None  # (offset, size) of the cls member, a folder class index, or None
    error: str | None = None  # a skip reason known from the index alone ("no_image", "shard"), else None


@dataclass
class Source:
    """A resolved source: its kind, its units and, for folders, the class of each file."""

    kind: str  # "shards" or "folder"
    units: list[str]  # shard paths, or image file paths
    name: str  # the source as the user gave it (for messages)
    classes: list[str] | None = None  # folder class names (index = label), None without class subfolders
    file_labels: list[int] | None = None  # folder: the class index of each unit

    def index(self, unit: int) -> list[Ref]:
        """The sample references of one unit, in stored order."""
        if self.kind == "folder":
            label = self.file_labels[unit] if self.file_labels is not None else None
            return [Ref(unit, self.units[unit], None, label)]
        return index_shard(self.units[unit], unit)


def resolve_source(source: str | os.PathLike | list | tuple) -> Source:
    """Turn what the user passed into a Source; a clear error naming any path that does not exist."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataSourceError("the data source is an empty list; pass shard paths or a folder")
        return Source("shards", [p for item in source for p in expand_shards(os.fspath(item))], str(source))
    text = os.fspath(source)
    if os.path.isdir(text):
        return list_folder(text)
    if "{" in text or "::" in text or text.endswith(".tar"):
        return Source("shards", expand_shards(text), text)
    if os.path.exists(text):
        raise DataSourceError(f"data source {text!r} is neither a folder nor a .tar shard; pass a folder of images, "
                         "a .tar shard, or a brace pattern like 'shards/train-{0000..0009}.tar'")
    raise MissingFile(f"data source {text!r} does not exist; pass an existing folder, .tar shard or "
                            "brace pattern of shards")


def expand_shards(pattern: str) -> list[str]:
    """Expand ``::``-joined brace patterns into shard paths, checking that each shard exists."""
    paths = [p for part in pattern.split("::") if part for p in braceexpand(part)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        shown = ", ".join(repr(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise MissingFile(f"shard pattern {pattern!r}: {len(missing)} of {len(paths)} shards do not exist "
                                f"({shown or 'the pattern expands to nothing'}); check the path and the range")
    for p in paths:
        if p.endswith((".gz", ".bz2", ".xz", ".zst")):
            raise DataSourceError(f"shard {p!r} is compressed; dualtoken_lite reads plain .tar shards (images inside "
                             "are compressed already): repack it with `tar` without compression")
    return paths


def file_identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file or directory ``path`` leads to, through links: one identity per real file."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def walk_files(root: str, seen: set[tuple[int, int]] | None = None) -> list[str]:
    """Every file under ``root``, sorted and recursive, each real file once. A link (to a directory or a file) that
    leads back inside ``root`` is skipped: what it points to is listed under its own path. A link that leads outside
    is followed, each directory entered once (a loop out there ends) and each file listed once. ``seen``: the
    identities already listed (shared across several roots), updated here."""
    seen = set() if seen is None else seen
    real_root = os.path.realpath(root)

    def leads_inside(path: str) -> bool:
        target = os.path.realpath(path)
        return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)

    files, entered = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = file_identity(dirpath)
        if here in entered:  # reached again through a link outside: walked already
            dirnames[:] = []
            continue
        entered.add(here)
        dirnames[:] = sorted(d for d in dirnames
                             if not (os.path.islink(os.path.join(dirpath, d)) and leads_inside(os.path.join(dirpath, d))))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and leads_inside(path):
                continue
            try:
                identity = file_identity(path)
            except OSError:  # a dangling link: kept, and reported as a bad file by whoever reads it
                identity = ("dangling", path)
            if identity not in seen:
                seen.add(identity)
                files.append(path)
    return files


def list_folder(root: str) -> Source:
    """All image files under ``root`` (recursive, sorted, each real file once); class labels when every image is in a
    subfolder."""
    files = [f for f in walk_files(root) if f.lower().endswith(FOLDER_IMAGE_EXTS)]
    if not files:
        raise MissingFile(f"image folder {root!r} holds no images with extensions {FOLDER_IMAGE_EXTS}")
    tops = [os.path.relpath(f, root).split(os.sep) for f in files]
    classes = labels = None
    if all(len(parts) > 1 for parts in tops):  # every image sits inside a first-level subfolder: its class
        classes = sorted({parts[0] for parts in tops})
        labels = [classes.index(parts[0]) for parts in tops]
    return Source("folder", files, root, classes, labels)


def scan_shard(path: str) -> tuple[list[tuple[str, dict[str, tuple[int, int]]]], str | None]:
    """Header-only scan of a tar shard: its samples in stored order, each (key, {ext: (offset, size)}), and the
    error that cut the scan short (a bad header, a truncated file) or None. Consecutive members sharing a key form
    one sample; extensions are lower-cased and the first member of each extension wins."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            while (info := tar.next()) is not None:
                if not info.isreg():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None:
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1].setdefault(ext.lower(), (info.offset_data, info.size))
            if os.path.getsize(path) < tar.offset + 2 * tarfile.BLOCKSIZE:  # tarfile stops quietly at a cut
                raise EOFError("the shard ends without the tar end-of-archive marker (truncated file)")
    except (tarfile.TarError, OSError, EOFError) as e:  # a cut or garbled shard: keep what came before
        return samples, f"{type(e).__name__}: {e}"
    return samples, None


def index_shard(path: str, unit: int) -> list[Ref]:
    """The shard's samples as references (image member chosen by preference); a scan error becomes one extra
    reference marked with it, so the loss is counted once."""
    samples, error = scan_shard(path)
    refs = [_sample_ref(unit, key, members) for key, members in samples]
    if error is not None:
        refs.append(Ref(unit, f"{path}@{len(refs)}", None, None, f"shard: {error}"))
    return refs


def read_shard(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Every sample of a shard with all its members' bytes: (key, {ext: bytes}), in stored order.

    For small shards read whole (the tiny world's eval set, token files); a damaged shard raises ValueError.
    """
    samples, error = scan_shard(path)
    if error is not None:
        raise DataSourceError(f"shard {path!r} is damaged ({error}); rewrite it")
    for key, members in samples:
        yield key, {ext: read_bytes(path, offset, size) for ext, (offset, size) in members.items()}


def _sample_ref(unit: int, key: str, members: dict[str, tuple[int, int]]) -> Ref:
    """One grouped sample -> Ref (image member chosen by preference; no image member -> error "no_image")."""
    image = next((members[e] for e in SHARD_IMAGE_EXTS if e in members), None)
    return Ref(unit, key, image, members.get(LABEL_EXT), None if image is not None else "no_image")


def read_bytes(path: str, offset: int, size: int) -> bytes:
    """Read ``size`` bytes at ``offset``; a short read (a cut file) raises EOFError."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise EOFError(f"{path!r} ends after {len(data)} of {size} bytes at offset {offset} (truncated)")
    return data
