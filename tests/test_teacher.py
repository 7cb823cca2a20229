"""The tiny world's teacher: the shipped weights keep their stated accuracy, the recipe's pieces behave."""

import json
import os

import numpy as np
import pytest
import torch

from dualtoken_lite import tinyworld as tw
from dualtoken_lite.tinyworld import teacher as T
from dualtoken_lite.tools import teacher as TT
from dualtoken_lite.training.optim import warmup_cosine

EVAL_SHARD = os.path.join(os.path.dirname(__file__), "..", "data", "tinyworld", "eval-0000.tar")


@pytest.fixture(scope="module")
def card():
    with open(os.path.join(T.TEACHER_DIR, T.CARD_FILE)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def eval_split():
    return tw.load_split([EVAL_SHARD])


def test_shipped_teacher_reproduces_its_stated_accuracy(card, eval_split):
    torch.set_num_threads(1)
    trunk, head = T.load_teacher()
    images, labels = eval_split
    model = torch.nn.Sequential(trunk, head)
    acc = T.accuracy(model, images, labels)
    assert abs(acc - card["eval_shard_accuracy"]) <= 2 / len(labels)  # a couple of images, fp noise only
    assert card["eval_shard_accuracy"] >= 0.9  # the target for a useful teacher


def test_pixel_probe_reproduces_its_stated_figure_and_is_poor(card, eval_split):
    images, labels = eval_split
    probe = TT.pixel_probe_accuracy(card["pixel_probe"]["train_count"], images, labels)
    assert probe["ridge"] == card["pixel_probe"]["ridge"]
    assert abs(probe["eval_accuracy"] - card["pixel_probe"]["eval_accuracy"]) <= 2 / len(labels)
    assert probe["eval_accuracy"] < 0.35 < card["eval_shard_accuracy"] - 0.5  # shape, not pixels, is the class


def test_loaded_teacher_is_frozen_and_shaped():
    trunk, head = T.load_teacher()
    x = tw.to_tensor(tw.make_batch(0, 3, "eval")[0])
    emb = trunk(x)
    assert emb.shape == (3, 128) and head(emb).shape == (3, len(tw.CLASSES))
    assert not trunk.training and not head.training
    assert not any(p.requires_grad for p in [*trunk.parameters(), *head.parameters()])


def test_save_load_round_trip_and_strict_keys(tmp_path):
    torch.manual_seed(0)
    model = T.Teacher().eval()
    card = {"classes": list(tw.CLASSES), "backbone": TT.asdict(model.backbone)}
    TT.save_teacher(model, card, str(tmp_path))
    trunk, head = T.load_teacher(str(tmp_path))
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})  # stored as float16
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(head(trunk(x)), model(x))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / T.WEIGHTS_FILE))
    weights.pop("head.bias")
    save_file(weights, str(tmp_path / T.WEIGHTS_FILE))
    with pytest.raises(RuntimeError, match="head.bias"):
        T.load_teacher(str(tmp_path))


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dualtoken_lite teacher"):
        T.load_teacher(str(tmp_path))


@pytest.mark.parametrize("warmup", [1, 10, 50])
def test_lr_schedule_warms_up_then_decays(warmup):
    cfg = TT.TeacherConfig(steps=200, warmup_steps=warmup, peak_lr=1e-3, final_lr_ratio=0.05)
    lrs = np.array([cfg.peak_lr * warmup_cosine(s, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio)
                    for s in range(cfg.steps + 1)])
    assert np.all(np.diff(lrs[:warmup]) > 0) and lrs[warmup - 1] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[warmup:]) <= 1e-12)
    assert lrs[-1] == pytest.approx(5e-5)


def test_dihedral_applies_one_of_the_eight_symmetries_per_image():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    views += [v.flip(3) for v in views]
    assert len({v[0].numpy().tobytes() for v in views}) == 8
    out = TT.dihedral(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert any(torch.equal(out[i], v[i]) for v in views)


def test_a_few_training_steps_run_and_log_held_out_accuracy():
    cfg = TT.TeacherConfig(steps=6, batch_size=8, warmup_steps=2, pool_size=16, eval_every=6, peak_lr=1e-3)
    images, labels = tw.make_batch(0, 8, "eval")
    lines = []
    model = TT.train_teacher(cfg, images, labels, log=lines.append)
    assert not model.training and any("eval acc" in line for line in lines)
