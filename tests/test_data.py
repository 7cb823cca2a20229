"""Data loading: WebDataset shards and folders, bad samples skipped and counted, rank splits, exact resume."""

import io
import os
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from test_images import bomb_png  # a tiny PNG whose header claims 30000 x 30000 pixels

from dualtoken_lite.datasets.loader import SkipCounter, build_loader

SIZE = 8  # image side in pixels, both stored and delivered
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
EXTS = ["jpg", "PNG", "webp", "JPEG", "png", "Jpg"]  # every WebDataset image extension, in several cases


def encode(i: int, ext: str = "png", size: int = SIZE) -> bytes:
    """Sample i's image: a solid colour unique to i, encoded as ``ext``."""
    image = Image.new("RGB", (size, size), (i % 256, (37 * i) % 256, (i // 256) * 40))
    buf = io.BytesIO()
    image.save(buf, format=FORMATS[ext.lower()])
    return buf.getvalue()


def good(i: int, ext: str = "png") -> dict:
    return {"__key__": f"{i:06d}", ext: encode(i, ext), "cls": str(i).encode(), "txt": b"a caption, ignored"}


def write_shard(path, samples) -> str:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


@pytest.fixture
def shards(tmp_path):
    """4 shards x 6 good samples (labels 0..23), every image extension present; returns the brace pattern."""
    for s in range(4):
        write_shard(tmp_path / f"shard-{s:04d}.tar",
                    [good(6 * s + j, EXTS[j]) for j in range(6)])
    return str(tmp_path / "shard-{0000..0003}.tar")


def collect(loader) -> list[dict]:
    return list(loader)


def labels_of(batches) -> list[int]:
    return [int(x) for b in batches for x in b["label"]]


def test_every_good_sample_arrives_once_in_eval(shards):
    loader = build_loader(shards, SIZE, 5, train=False)
    batches = collect(loader)
    assert sorted(labels_of(batches)) == list(range(24)) and len(loader) == len(batches) == 5
    b = batches[0]
    assert b["image"].shape == (5, 3, SIZE, SIZE) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.long and b["image"].min() >= -1 and b["image"].max() <= 1
    assert [b["index"] for b in batches] == list(range(5)) and loader.skips.total == 0


def test_brace_patterns_lists_and_joins_expand(shards, tmp_path):
    paths = [str(tmp_path / f"shard-{s:04d}.tar") for s in range(4)]
    joined = str(tmp_path / "shard-{0000..0001}.tar") + "::" + str(tmp_path / "shard-{0002..0003}.tar")
    for source in (shards, paths, joined):
        loader = build_loader(source, SIZE, 4, train=True)
        assert loader.stream.source.units == paths
        assert sorted(labels_of(collect(loader))) == list(range(24))


@pytest.mark.parametrize("source,error,match", [
    ("missing_dir", FileNotFoundError, "missing_dir"),
    ("shard-{0000..0005}.tar", FileNotFoundError, "shard-0004.tar"),
    ("notes.txt", ValueError, "notes.txt"),
])
def test_bad_sources_are_clear_errors_naming_the_path(shards, tmp_path, source, error, match):
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(error, match=match):
        build_loader(str(tmp_path / source), SIZE, 4, train=True)


def noise_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bad_shard(path) -> tuple[str, list[int], dict]:
    """8 good samples with 6 bad ones between them; returns path, good labels and the expected skip counts."""
    samples = [good(i, EXTS[i % 6]) for i in range(8)]
    bad = [
        {"__key__": "corrupt", "jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)), "cls": b"100"},
        {"__key__": "truncated", "png": noise_png()[:300], "cls": b"101"},
        {"__key__": "text", "png": b"just some text", "cls": b"102"},
        {"__key__": "bomb", "png": bomb_png(), "cls": b"103"},
        {"__key__": "caption_only", "txt": b"no image here", "cls": b"104"},
        {"__key__": "badlabel", "png": encode(105), "cls": b"not a number"},
    ]
    for k, sample in enumerate(bad):
        samples.insert(1 + 2 * k, sample)
    counts = {"decode": 3, "bomb": 1, "no_image": 1, "no_label": 1}
    return write_shard(path, samples), list(range(8)), counts


@pytest.mark.parametrize("train", [False, True])
def test_bad_entries_are_skipped_and_counted(tmp_path, train):
    path, labels, counts = bad_shard(tmp_path / "bad.tar")
    loader = build_loader(path, SIZE, 7, train=train)  # 14 raw samples = 2 batches of 7
    batches = collect(loader)
    assert loader.skips.as_dict() == counts
    seen = labels_of(batches)
    assert set(seen) == set(labels)
    if train:  # the gaps are refilled from the same batch: B stays fixed
        assert [len(b["image"]) for b in batches] == [7, 7]
    else:  # evaluation delivers each good sample exactly once
        assert sorted(seen) == labels
    total = SkipCounter()
    for b in batches:
        total.update(b)
    assert total.as_dict() == counts


@pytest.mark.parametrize("where,expected", [
    ("inside_image_data", {"shard": 1, "decode": 1}), ("at_a_header", {"shard": 1, "no_image": 1}),
    ("inside_a_header", {"shard": 1, "no_image": 1}), ("in_the_end_padding", {}),  # 000003.cls came first
])
def test_truncated_shard_keeps_the_samples_before_the_cut(tmp_path, where, expected):
    path = write_shard(tmp_path / "cut.tar", [good(i, "png") for i in range(6)])
    with tarfile.open(path) as tar:
        png = [m for m in tar.getmembers() if m.name == "000003.png"][0]
        end = tar.offset  # where the end-of-archive marker starts
    cut = {"inside_image_data": png.offset_data + png.size // 2, "at_a_header": png.offset,
           "inside_a_header": png.offset + 100, "in_the_end_padding": end + 1024}[where]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:cut])
    loader = build_loader(path, SIZE, 1, train=False, labels=False)
    seen = len(collect(loader))
    assert loader.skips.as_dict() == expected and seen == (6 if not expected else 3)  # samples 0-2 survive


def test_labels_can_be_switched_off_and_bomb_limit_lowered(shards):
    loader = build_loader(shards, SIZE, 4, train=False, labels=False, max_pixels=SIZE * SIZE - 1)
    assert collect(loader) == [] and loader.skips.as_dict() == {"bomb": 24}


@pytest.mark.parametrize("n_shards", [4, 1])  # shards split by rank, or samples split when shards are too few
@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_see_disjoint_samples(tmp_path, n_shards, train):
    for s in range(n_shards):
        write_shard(tmp_path / f"r-{s}.tar", [good(100 * s + j) for j in range(7 if s else 9)])
    source = [str(tmp_path / f"r-{s}.tar") for s in range(n_shards)]
    everything = {100 * s + j for s in range(n_shards) for j in range(7 if s else 9)}
    loaders = [build_loader(source, SIZE, 2, train=train, rank=r, world_size=2) for r in (0, 1)]
    seen = [labels_of(collect(loader)) for loader in loaders]
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) <= everything
    if train:  # every rank takes the same number of steps (DDP would hang otherwise)
        assert len(loaders[0]) == len(loaders[1]) > 0 and len(seen[0]) == len(seen[1])
    else:  # evaluation covers every sample exactly once
        assert sorted(seen[0] + seen[1]) == sorted(everything)


def batches_equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["index"] == y["index"] and torch.equal(x["label"], y["label"]) and torch.equal(x["image"], y["image"])
        for x, y in zip(a, b))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_at_start_batch_equals_the_uninterrupted_run(tmp_path, num_workers):
    for s in range(3):
        write_shard(tmp_path / f"s-{s}.tar", [good(10 * s + j, EXTS[j % 6]) for j in range(8)])
    path = bad_shard(tmp_path / "s-3.tar")[0]
    source = [str(tmp_path / f"s-{s}.tar") for s in range(3)] + [path]
    kwargs = dict(image_size=6, batch_size=4, train=True, seed=3, epoch=1, num_workers=num_workers)
    full = collect(build_loader(source, **kwargs))
    assert len(full) == (24 + 14) // 4  # drop-last
    assert batches_equal(full, collect(build_loader(source, **{**kwargs, "num_workers": 0})))  # any workers
    for k in (1, 4, len(full) - 1):
        assert batches_equal(collect(build_loader(source, start_batch=k, **kwargs)), full[k:])
    loader = build_loader(source, **kwargs)
    loader.set_epoch(2)
    other_epoch = collect(loader)
    assert labels_of(other_epoch) != labels_of(full)  # a new shuffle each epoch
    loader.set_epoch(1, 2)
    assert batches_equal(collect(loader), full[2:])


def test_epoch_samples_fixes_the_epoch_length_and_cycles(shards):
    loader = build_loader(shards, SIZE, 4, train=True, epoch_samples=80, world_size=2, rank=1)
    batches = collect(loader)
    assert len(loader) == len(batches) == 80 // 2 // 4
    assert len(set(labels_of(batches))) > 6  # it went round this rank's shards more than once
    with pytest.raises(ValueError, match="epoch_samples"):
        build_loader(shards, SIZE, 4, train=True, epoch_samples=6, world_size=2)


def test_training_order_is_shuffled_across_shards_and_seeded(shards):
    first = labels_of(collect(build_loader(shards, SIZE, 6, train=True, seed=0)))
    assert first == labels_of(collect(build_loader(shards, SIZE, 6, train=True, seed=0)))
    assert first != labels_of(collect(build_loader(shards, SIZE, 6, train=True, seed=1)))
    assert len({x // 6 for x in first[:6]}) > 1  # the first batch mixes shards


def write_image(path, i: int, data: bytes | None = None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode(i, path.rsplit(".", 1)[-1]) if data is None else data)


def test_folders_with_class_subfolders_give_labels(tmp_path):
    root = str(tmp_path / "folder")
    for i, rel in enumerate(["cat/a.png", "cat/b.JPG", "dog/c.webp", "dog/deeper/d.png", "emu/e.jpeg"]):
        write_image(os.path.join(root, rel), i)
    write_image(os.path.join(root, "dog/broken.jpg"), 0, b"not a jpeg")
    write_image(os.path.join(root, "emu/notes.txt"), 0, b"ignored: not an image extension")
    loader = build_loader(root, SIZE, 1, train=False)
    assert loader.classes == ["cat", "dog", "emu"]
    batches = collect(loader)
    assert sorted(labels_of(batches)) == [0, 0, 1, 1, 2] and loader.skips.as_dict() == {"decode": 1}
    assert [b["image"].shape for b in batches] == [(1, 3, SIZE, SIZE)] * 5


def test_flat_folders_have_no_labels(tmp_path):
    root = str(tmp_path / "flat")
    for i in range(3):
        write_image(os.path.join(root, f"{i}.png"), i)
    batches = collect(build_loader(root, SIZE, 3, train=True))
    assert len(batches) == 1 and "label" not in batches[0] and batches[0]["image"].shape == (3, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="class subfolders"):
        build_loader(root, SIZE, 3, train=True, labels=True)
