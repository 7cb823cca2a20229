"""The tiny world's generator: deterministic, disjoint splits, shape-only classes, shards that round-trip."""

import hashlib
import os

import numpy as np
import pytest
import torch

from dualtoken_lite import tinyworld as tw

EVAL_SHARD = os.path.join(os.path.dirname(__file__), "..", "data", "tinyworld", "eval-0000.tar")


@pytest.mark.parametrize("split", sorted(tw.SPLITS))
@pytest.mark.parametrize("index", [0, 7, 12345])
def test_sample_is_deterministic(split, index):
    a, meta_a = tw.make_sample(index, split)
    b, meta_b = tw.make_sample(index, split)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and meta_a == meta_b
    other, _ = tw.make_sample(index, split, tw.TinyWorldConfig(seed=1))
    assert not np.array_equal(a, other)  # the base seed matters


def test_splits_are_disjoint():
    assert not set(tw.PHOTOS["train"]) & set(tw.PHOTOS["eval"])
    digests = {}
    for split in tw.SPLITS:
        images, _ = tw.make_batch(0, 256, split)
        digests[split] = {hashlib.sha1(im.tobytes()).hexdigest() for im in images}
        assert len(digests[split]) == 256  # no repeats inside a split either
    assert not digests["train"] & digests["eval"]


@pytest.mark.parametrize("split", sorted(tw.SPLITS))
def test_photo_backgrounds_come_from_the_split_photos(split):
    photos = {tw.make_sample(i, split)[1]["photo"] for i in range(200)} - {None}
    assert photos and photos <= set(tw.PHOTOS[split])


def test_labels_balanced_and_every_background_and_fill_used():
    metas = [tw.make_sample(i, "train")[1] for i in range(400)]
    counts = np.bincount([m["label"] for m in metas], minlength=len(tw.CLASSES))
    assert counts.min() == counts.max() == 400 // len(tw.CLASSES)
    assert {m["background"] for m in metas} == set(tw.BACKGROUNDS)
    assert {m["fill"] for m in metas} == set(tw.FILLS)
    assert all(m["class"] == tw.CLASSES[m["label"]] for m in metas)


@pytest.mark.parametrize("name", tw.CLASSES)
def test_shape_mask_is_bold_and_inside_the_frame(name):
    cfg = tw.TinyWorldConfig()
    for index in range(20):
        mask = tw.shape_mask(name, tw.sample_rng(index, "train"), cfg)
        assert mask.shape == (64, 64) and mask.min() >= 0 and mask.max() <= 1
        assert mask.sum() > 64  # at least 64 pixels of shape: bold, never a speck
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.max() == 0  # the whole shape stays in view


def test_holes_are_holes():
    """The ring's centre is background; the disc's is shape (the classes really differ in structure)."""
    cfg = tw.TinyWorldConfig(min_radius=0.4, max_radius=0.4)
    ring = tw.shape_mask("ring", np.random.default_rng(0), cfg)
    disc = tw.shape_mask("disc", np.random.default_rng(0), cfg)
    ys, xs = np.nonzero(disc > 0.5)
    cy, cx = int(ys.mean()), int(xs.mean())
    assert disc[cy, cx] == 1 and ring[cy, cx] == 0


def test_to_tensor_range_and_layout():
    images, _ = tw.make_batch(0, 4, "eval")
    x = tw.to_tensor(images)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose((x[1, :, 5, 9] + 1) * 127.5, torch.tensor(images[1, 5, 9], dtype=torch.float32))


def test_committed_eval_shard_matches_the_generator():
    images, labels = tw.load_split([EVAL_SHARD])
    assert images.shape == (tw.DEFAULT_COUNTS["eval"], 64, 64, 3)
    fresh, fresh_labels = tw.make_batch(0, len(images), "eval")
    assert np.array_equal(images, fresh) and np.array_equal(labels, fresh_labels)


def test_shards_are_byte_identical_and_read_by_webdataset(tmp_path):
    import webdataset as wds

    a = tw.write_shards(str(tmp_path / "a"), "train", 10, shard_size=4)
    b = tw.write_shards(str(tmp_path / "b"), "train", 10, shard_size=4)
    assert [os.path.basename(p) for p in a] == ["train-0000.tar", "train-0001.tar", "train-0002.tar"]
    assert [open(p, "rb").read() for p in a] == [open(p, "rb").read() for p in b]
    dataset = wds.WebDataset(a, shardshuffle=False).decode("rgb8").to_tuple("png", "cls")
    images, labels = tw.make_batch(0, 10, "train")
    got = list(dataset)
    assert len(got) == 10
    for (image, label), want, want_label in zip(got, images, labels):
        assert np.array_equal(image, want) and label == want_label


def test_ensure_tinyworld_writes_only_what_is_missing(tmp_path):
    root = str(tmp_path)
    paths = tw.ensure_tinyworld(root, counts={"train": 6, "eval": 3}, shard_size=4)
    assert sorted(paths) == ["eval", "train"] and len(paths["train"]) == 2 and len(paths["eval"]) == 1
    stamp = os.stat(paths["train"][0]).st_mtime_ns
    os.remove(paths["eval"][0])
    again = tw.ensure_tinyworld(root, counts={"train": 6, "eval": 3}, shard_size=4)
    assert again == paths and os.path.exists(paths["eval"][0])
    assert os.stat(paths["train"][0]).st_mtime_ns == stamp  # present shards are not rewritten


@pytest.mark.parametrize("bad", [lambda: tw.make_sample(0, "test"), lambda: tw.make_sample(-1, "train"),
                                 lambda: tw.shape_outlines("hexagon")])
def test_bad_input_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="choose one of|must be >= 0"):
        bad()
