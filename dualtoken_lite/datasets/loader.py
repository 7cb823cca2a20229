"""Data loading: shards or folders -> batches of (B, 3, h, w) images in [-1, 1], resumable at any batch (docs/method.md §5).

(Longer than the usual ~300 lines on purpose: the ordering contract below and the one stream that keeps it are
one concept, and splitting them would put the contract in one file and its only implementation in another.)

    loader = build_loader("data/tinyworld/train-{0000..0003}.tar", image_size=64, batch_size=32, train=True,
                          num_workers=2, seed=0, rank=rank, world_size=world_size)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch, start_batch=position if epoch == start_epoch else 0)
        for batch in loader:      # {"image": (B, 3, h, w), "label": (B,), "key": [B names], "index": int, ...}
            ...                   # after the step, the data position to save is (epoch, batch["index"] + 1)

The order of an epoch is a pure function of (seed, epoch, rank, world_size): the same on every run and for any
number of workers, which is what makes resuming after a SIGKILL exact.

1. Units (shards, or files of a folder) are permuted by ``rng(seed, epoch)``, identically on every rank, and
   dealt out ``units[rank::world_size]`` (split by node). With fewer units than ranks, every rank walks all units
   and keeps every ``world_size``-th sample instead. Either way the ranks' samples are disjoint.
2. A rank's units are taken in windows of ``shuffle_window``; the samples of a window (read from the tar
   headers only) are permuted by ``rng(seed, epoch, pass, window)``. Evaluation skips both permutations.
3. The rank's stream is cut to its epoch length: ``epoch_samples // world_size`` samples when ``epoch_samples``
   is given (cycling through the units again if needed, like the release's ``--train-num-samples``); else one
   pass, cut in training to the shortest rank's length, so all ranks take the same number of DDP steps
   (this needs the header index of every shard: fine for small data, pass ``epoch_samples`` at scale).
4. Batch b is the stream's samples [b * B, (b + 1) * B). Training drops the final partial batch.
5. Split by worker: worker w decodes the batches b with (b - start_batch) % num_workers == w; the DataLoader
   collects workers round robin, so batches arrive in order b = start_batch, start_batch + 1, ...
   ``start_batch`` = k starts at batch k without decoding batches 0 .. k-1 (only tar headers are read).

Bad samples (corrupt, truncated, not an image, a decompression bomb, no image entry, a missing label, a broken
shard) are skipped, logged and counted, never fatal. The count travels with the batch that lost them
(``batch["skipped"]``, reason -> count) and adds up in ``loader.skips``, a ``SkipCounter`` per rank.
In training the gaps are refilled by repeating good samples of the same batch, so B stays fixed; a batch with no
good sample is dropped and its counts move to the next batch. Evaluation never repeats: its batches just shrink.
Random crops draw from ``rng(seed, epoch, rank, sample position)``, so they too are independent of workers.
"""

from __future__ import annotations

import itertools
import logging
import signal
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dualtoken_lite.datasets.images import BadImageError, build_transform, decode_image
from dualtoken_lite.datasets.sources import Ref, Source, read_bytes, resolve_source
from dualtoken_lite.settings import UserError

log = logging.getLogger(__name__)
MAX_LOGGED_SKIPS = 10  # bad samples logged per worker and epoch (all are counted)


class DataError(UserError, ValueError):
    """The data cannot feed training (no full batch in an epoch); the message names the data and the counts."""


class SkipCounter:
    """Counts of skipped samples by reason; ``update(batch)`` adds a batch's ``skipped`` dict."""

    def __init__(self, counts: dict[str, int] | None = None):
        self.counts: Counter[str] = Counter(counts or {})  # reason -> number of skipped samples

    def update(self, batch_or_counts: dict) -> SkipCounter:
        """Add a batch's ``skipped`` counts (or a plain reason -> count dict)."""
        counts = batch_or_counts.get("skipped", {}) if "image" in batch_or_counts else batch_or_counts
        self.counts.update({k: int(v) for k, v in counts.items()})
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def __repr__(self) -> str:
        return f"SkipCounter(total={self.total}, {self.as_dict()})"


class ImageStream(IterableDataset):
    """The batches of one rank for one epoch, in the order described in this module's docstring."""

    def __init__(self, source: Source, image_size: int, batch_size: int, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_samples: int | None = None, labels: bool = False,
                 max_pixels: int | None = -1, shuffle_window: int = 8):
        self.source = source  # the resolved shards or folder
        self.batch_size = batch_size  # B, samples per batch of this rank
        self.train = train  # shuffle + random crop + drop the last partial batch; else plain order, eval crop
        self.seed = seed  # one seed for every permutation and crop
        self.rank, self.world_size = rank, world_size  # this process among the data-parallel ones
        self.epoch_samples = epoch_samples  # samples per epoch over all ranks; None = one pass over the data
        self.labels = labels  # deliver "label" (a missing or unparsable label skips the sample)
        self.max_pixels = max_pixels  # decompression-bomb limit (-1 = PIL's MAX_IMAGE_PIXELS)
        self.shuffle_window = shuffle_window  # units whose samples are shuffled together
        self.transform = build_transform(image_size, train)
        self.epoch, self.start_batch = 0, 0
        self._index: dict[int, list[Ref]] = {}  # unit -> its refs (filled lazily, or fully by unit_counts)
        self._counts: list[int] | None = None

    # -- the order ---------------------------------------------------------------------------------------
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _unit_refs(self, unit: int) -> list[Ref]:
        if unit not in self._index:
            self._index[unit] = self.source.index(unit)
        return self._index[unit]

    def unit_counts(self) -> list[int]:
        """Raw samples per unit (indexes every shard's headers once)."""
        if self._counts is None:
            self._counts = [len(self._unit_refs(u)) for u in range(len(self.source.units))]
        return self._counts

    def _units_of_pass(self, epoch: int, p: int, rank: int) -> tuple[np.ndarray, bool]:
        """This pass's unit order for ``rank``, and whether samples (not units) are split across ranks."""
        n = len(self.source.units)
        order = self._rng(epoch, p).permutation(n) if self.train else np.arange(n)
        if n >= self.world_size:
            return order[rank :: self.world_size], False
        return order, True

    def _pass_refs(self, epoch: int, p: int) -> Iterator[Ref]:
        """One pass over this rank's units: windows of units, samples permuted within each window."""
        units, split_samples = self._units_of_pass(epoch, p, self.rank)
        seen = 0
        for start in range(0, len(units), self.shuffle_window):
            refs = [r for u in units[start : start + self.shuffle_window] for r in self._unit_refs(int(u))]
            if self.train:
                refs = [refs[i] for i in self._rng(epoch, p, start, 1).permutation(len(refs))]
            for ref in refs:
                if not split_samples or seen % self.world_size == self.rank:
                    yield ref
                seen += 1

    def rank_length(self, epoch: int) -> int | None:
        """Raw samples in this rank's epoch (None in evaluation without epoch_samples: one full pass)."""
        if self.epoch_samples is not None:
            return self.epoch_samples // self.world_size
        if not self.train:
            return None
        counts = self.unit_counts()
        lengths = []
        for r in range(self.world_size):
            units, split_samples = self._units_of_pass(epoch, 0, r)
            total = sum(counts[int(u)] for u in units)
            lengths.append(total // self.world_size + (r < total % self.world_size) if split_samples else total)
        return min(lengths)

    def rank_refs(self, epoch: int) -> Iterator[Ref]:
        """This rank's raw sample stream for ``epoch``, cut to its epoch length."""
        length = self.rank_length(epoch)
        if length is None:
            return self._pass_refs(epoch, 0)
        return itertools.islice(self._cycle(epoch), length)

    def _cycle(self, epoch: int) -> Iterator[Ref]:
        for p in itertools.count():
            empty = True
            for ref in self._pass_refs(epoch, p):
                empty = False
                yield ref
            if empty:
                raise ValueError(f"rank {self.rank} gets no samples from {self.source.name!r}")

    def num_batches(self, epoch: int) -> int:
        """Batches in this rank's epoch (from batch 0)."""
        length = self.rank_length(epoch)
        if length is None:
            length = sum(1 for _ in self._pass_refs(epoch, 0))
        return length // self.batch_size if self.train else -(-length // self.batch_size)

    # -- reading -----------------------------------------------------------------------------------------
    def _load(self, ref: Ref, epoch: int, position: int) -> tuple[torch.Tensor, int | None]:
        """Read, decode and transform one sample; raises BadImageError / ValueError for bad ones."""
        if ref.error is not None:
            raise SkipSample(ref.error.split(":")[0], ref.error)
        path = self.source.units[ref.unit]
        if self.source.kind == "folder":
            with open(path, "rb") as f:
                data = f.read()
        else:
            data = read_bytes(path, *ref.image)
        name = path if self.source.kind == "folder" else f"{path}:{ref.key}"
        image = decode_image(data, name, self.max_pixels)
        label = None
        if self.labels:
            label = ref.label if isinstance(ref.label, int) else _parse_label(path, ref)
        crop_rng = self._rng(epoch, self.rank, position, 2)
        return self.transform(image, crop_rng), label

    def _make_batch(self, index: int, refs: list[Ref], first_position: int, epoch: int) -> dict:
        images, labels, keys, skipped = [], [], [], Counter()
        for i, ref in enumerate(refs):
            try:
                image, label = self._load(ref, epoch, first_position + i)
            except Exception as e:  # never fatal: count it by reason and carry on
                reason = _reason(e)
                skipped[reason] += 1
                if sum(skipped.values()) + self._logged <= MAX_LOGGED_SKIPS:
                    log.warning("skipping sample %r of %s (%s): %s", ref.key, self.source.units[ref.unit],
                                reason, e)
                continue
            images.append(image)
            labels.append(label)
            keys.append(ref.key)
        self._logged += sum(skipped.values())
        if self.train and images and len(images) < self.batch_size:  # refill: keep B fixed in training
            fill = [i % len(images) for i in range(self.batch_size - len(images))]
            images += [images[i] for i in fill]
            labels += [labels[i] for i in fill]
            keys += [keys[i] for i in fill]
        batch = {"index": index, "skipped": dict(skipped), "key": keys}  # key: each sample's name, (B,) strings
        batch["image"] = torch.stack(images) if images else torch.empty(0, 3, 0, 0)  # (B, 3, h, w)
        if self.labels:
            batch["label"] = torch.tensor(labels, dtype=torch.long)  # (B,)
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start, B = self.epoch, self.start_batch, self.batch_size
        self._logged = 0
        refs = self.rank_refs(epoch)
        for index in itertools.count():
            chunk = list(itertools.islice(refs, B))
            if not chunk or (self.train and len(chunk) < B):
                return  # end of epoch (training drops the final partial batch)
            if index >= start and (index - start) % workers == worker:
                yield self._make_batch(index, chunk, index * B, epoch)


class SkipSample(Exception):
    """A sample known to be unusable, with the counter key it is skipped under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason  # "no_image", "no_label", "shard", ...


def _parse_label(path: str, ref: Ref) -> int:
    """The integer in a sample's ``cls`` member; SkipSample("no_label") when missing or not an integer."""
    if ref.label is None:
        raise SkipSample("no_label", "the sample has no cls entry")
    text = read_bytes(path, *ref.label).decode("utf-8", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise SkipSample("no_label", f"cls entry {text[:20]!r} is not an integer") from None


def _reason(e: Exception) -> str:
    """The counter key of a failure: bomb, decode, no_image, no_label, shard or read."""
    if isinstance(e, BadImageError):
        return e.kind
    if isinstance(e, SkipSample):
        return e.reason
    if isinstance(e, EOFError):
        return "decode"  # an image member cut short by a truncated shard
    return "read"


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A data-loader worker ignores Ctrl-C and SIGTERM (a terminal sends Ctrl-C to every process of the job): the
    trainer decides when to stop and ends its workers itself."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


class Loader:
    """The per-rank iterable the trainer uses: a DataLoader over an ImageStream plus the epoch position."""

    def __init__(self, stream: ImageStream, num_workers: int = 0, pin_memory: bool = False):
        self.stream = stream  # what is read and in which order
        self.num_workers = num_workers  # DataLoader worker processes (0 = read in this process)
        self.pin_memory = pin_memory  # page-locked batches for faster host-to-GPU copies
        self.skips = SkipCounter()  # bad samples skipped in this rank's current epoch
        self.classes = stream.source.classes  # folder class names, when class subfolders give labels

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch to iterate and the batch to start from (the saved data position)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0; got epoch={epoch}, start_batch={start_batch}")
        self.stream.epoch, self.stream.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches in the current epoch, counted from batch 0."""
        return self.stream.num_batches(self.stream.epoch)

    def describe(self) -> str:
        """What this rank's epoch holds, for error messages: the data, raw samples, bad ones, the batch size."""
        stream = self.stream
        raw = stream.rank_length(stream.epoch)
        raw = sum(1 for _ in stream.rank_refs(stream.epoch)) if raw is None else raw
        bad = f", {self.skips.total} of them skipped as bad ({self.skips.as_dict()})" if self.skips.total else ""
        rank = f" on rank {stream.rank} of {stream.world_size}" if stream.world_size > 1 else ""
        return (f"{stream.source.name!r} gives {raw} samples per epoch{rank}{bad}, and a batch needs "
                f"{stream.batch_size} good ones")

    def __iter__(self) -> Iterator[dict]:
        self.skips = SkipCounter()
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, worker_init_fn=leave_stop_signals_to_the_trainer)
        carried = Counter()
        for batch in loader:
            self.skips.update(batch["skipped"])
            carried.update(batch["skipped"])
            if len(batch["image"]) == 0:
                continue  # no good sample at all: drop the batch, its counts go with the next one
            batch["skipped"] = dict(carried)
            carried = Counter()
            yield batch


def build_loader(source, image_size: int, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_samples: int | None = None, start_batch: int = 0,
                 epoch: int = 0, labels: bool | None = None, max_pixels: int | None = -1,
                 shuffle_window: int = 8, pin_memory: bool = False) -> Loader:
    """A resumable per-rank loader of (B, 3, image_size, image_size) images in [-1, 1] (see module docstring).

    source: folder, shard path, brace pattern or list of shards. labels: None = deliver labels when the data has
    them (folder class subfolders; ``cls`` in the first shard sample), True = require them, False = never.
    """
    for name, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                             ("world_size", world_size, 1), ("num_workers", num_workers, 0),
                             ("shuffle_window", shuffle_window, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
    if epoch_samples is not None and epoch_samples < world_size * batch_size:
        raise ValueError(f"epoch_samples={epoch_samples} gives no full batch of {batch_size} on each of "
                         f"{world_size} ranks; use at least {world_size * batch_size} or None (one pass)")
    src = resolve_source(source)
    if labels is None:
        first = src.index(0)
        labels = src.classes is not None if src.kind == "folder" else bool(first) and first[0].label is not None
    elif labels and src.kind == "folder" and src.classes is None:
        raise ValueError(f"labels=True but the images of folder {src.name!r} are not all inside class "
                         "subfolders (root/<class>/<image>); move them there or pass labels=False")
    stream = ImageStream(src, image_size, batch_size, train, seed, rank, world_size, epoch_samples, labels,
                         max_pixels, shuffle_window)
    if epoch_samples is None and train:
        stream.unit_counts()  # index every shard once here, so the workers inherit it instead of re-reading
    loader = Loader(stream, num_workers, pin_memory)
    loader.set_epoch(epoch, start_batch)
    return loader
