"""The tiny world's attribute classifier: shapes, a save / load round trip, clear errors, and the shipped judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tinyworld import classifier as C
from dualtoken_lite.tinyworld.captions import CLASSIFIED
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tools import classifier as T
from dualtoken_lite.tools.classifier import ClassifierConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def few():
    """Eight train images, their labels."""
    images, metas = make_samples(0, 8, "train")
    return images, C.attribute_labels(metas)


SMALL = {"widths": (8, 16), "groups": 4, "texture_width": 4}  # a model small enough for a test


@pytest.mark.parametrize("widths", [(8, 16), (16, 16, 32, 32), ClassifierConfig.widths])
def test_forward_gives_one_logit_row_per_attribute_value(widths):
    model = C.AttributeClassifier(widths, groups=4, texture_width=widths[0] // 4)
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    logits = model(images)
    assert list(logits) == list(C.ATTRIBUTES) == list(CLASSIFIED)
    assert {a: tuple(v.shape) for a, v in logits.items()} == {a: (3, len(CLASSIFIED[a])) for a in CLASSIFIED}
    assert model.features(images).shape == (3, model.embed_dim) == (3, 2 * widths[-1])


def test_detail_saturates_edges_and_keeps_one_level_of_texture():
    flat = torch.zeros(1, 3, 8, 8)
    assert torch.equal(C.detail(flat, 64.0), flat)  # a flat paint has no detail at all
    one_level = flat.clone()
    one_level[..., 4, 4] = 2 / 255  # one level of 255 in [-1, 1] units
    assert C.detail(one_level, 64.0)[..., 4, 4].min() > 0.3
    edge = flat.clone()
    edge[..., :, 4:] = 1.0
    assert C.detail(edge, 64.0).abs().max() > 0.99


def test_labels_are_the_first_four_fields_of_the_image_code(few):
    _, labels = few
    assert labels["shape"].tolist() == [i % 8 for i in range(8)]  # the drawing's class cycle
    for a in C.ATTRIBUTES:
        assert labels[a].min() >= 0 and labels[a].max() < len(CLASSIFIED[a])


def test_a_short_run_saves_and_loads_back_with_the_same_predictions(tmp_path, few):
    images, labels = few
    cfg = T.ClassifierConfig(steps=3, batch_size=4, pool_size=8, warmup_steps=1, **SMALL)
    model = T.train_classifier(cfg, images, labels, progress=False)
    C.save_classifier(model, {"recipe": "test"}, tmp_path)
    loaded = C.load_classifier(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # the saved weights are float16: predictions equal those of the float16-rounded model
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    assert {a: v.tolist() for a, v in C.classify(loaded, images).items()} == \
        {a: v.tolist() for a, v in C.classify(model, images).items()}
    with torch.no_grad():
        assert torch.equal(loaded.features(to_tensor(images)), model.features(to_tensor(images)))


def test_loading_is_strict(tmp_path, few):
    model = C.AttributeClassifier(**SMALL)
    C.save_classifier(model, {}, tmp_path)
    card = json.loads((tmp_path / C.CARD_FILE).read_text())
    card["model"]["widths"] = [8, 32]  # a card that does not match the weights
    (tmp_path / C.CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(RuntimeError, match="size mismatch"):
        C.load_classifier(tmp_path)


def test_a_missing_classifier_names_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{C.CARD_FILE}.*dualtoken_lite classifier"):
        C.load_classifier(tmp_path / "nothing")
    C.save_classifier(C.AttributeClassifier(**SMALL), {}, tmp_path)
    (tmp_path / C.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=C.WEIGHTS_FILE):
        C.load_classifier(tmp_path)


def test_the_command_refuses_a_folder_that_holds_a_classifier(tmp_path, capsys):
    C.save_classifier(C.AttributeClassifier(**SMALL), {"mark": 1}, tmp_path)
    assert run_cli(T.main, ["--out", str(tmp_path), "--steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((tmp_path / C.CARD_FILE).read_text())["mark"] == 1  # untouched


def test_bad_settings_are_refused_before_any_work(tmp_path, capsys):
    for args in (["--steps", "0"], ["--widths", "30,64"], ["--lr", "inf"], ["--texture-width", "3"]):
        assert run_cli(T.main, ["--out", str(tmp_path / "c"), *args]) == 2
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_shipped_classifier_reads_shape_and_colour():
    """The shipped judge (data/classifier/) reads eval images 0-255: shape and colour at least 90 %."""
    model = C.load_classifier()
    images, labels = C.held_out_set(0, 256)
    acc = C.accuracy(model, images, labels)
    assert acc["shape"] >= 0.9 and acc["colour"] >= 0.9, acc
    card = C.read_card()
    assert set(card["accuracy"]) == set(C.ATTRIBUTES) and card["weights_dtype"].startswith("float16")
    assert np.isclose(acc["shape"], card["accuracy"]["shape"], atol=0.06)  # images 0-255 are a quarter of its set
