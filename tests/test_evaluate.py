"""The evaluate command: figures through the codes equal the forward pass's, rFID's code path against a hand-computed
Frechet distance, clear refusals for what is missing, table + JSON from a run folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import image_folder, saved_model, shard, small_model
from scipy import linalg
from torch import nn

from dualtoken_lite.datasets.images import to_uint8
from dualtoken_lite.datasets.loader import build_loader
from dualtoken_lite.evaluation import external as ext
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.evaluation.metrics import psnr, ssim
from dualtoken_lite.evaluation.zero_shot import (
    ZeroShotHead,
    attribute_heads,
    attribute_labels,
    class_score,
    tinyworld_score,
)
from dualtoken_lite.tinyworld.drawing import CLASSES, make_samples, to_tensor
from dualtoken_lite.tinyworld.teacher import TinySigLIP, save_teacher
from dualtoken_lite.tools import evaluate as ev


class PooledColour(nn.Module):
    """A stand-in FID feature network: uint8 (B, 3, h, w) -> mean colour of each 2 x 2 block, (B, 12)."""

    num_features = 12

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to feature rows a and b (scipy's matrix square root)."""
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def random_head(model, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(model.cfg.backbone.width, len(CLASSES)).eval()


@torch.no_grad()
def forward_figures(model, x, y, head, teacher) -> dict:
    """The same figures by hand, through the forward pass instead of the codes."""
    out = model.eval()(x)
    figures = {"psnr": psnr(out.reconstruction, x).mean().item(), "ssim": ssim(out.reconstruction, x).mean().item()}
    if out.pooled is not None:
        figures["semantic_accuracy"] = (head(out.pooled).argmax(-1) == y).sum().item() / len(y)
        figures["teacher_accuracy"] = (head(teacher(x)).argmax(-1) == y).sum().item() / len(y)
    return figures


@pytest.mark.parametrize("kind", ["dual", "shared", "no_semantic"])
@pytest.mark.parametrize("head_kind", ["linear", "zero_shot"])
def test_codes_path_equals_forward_path(tmp_path, kind, head_kind):
    model = small_model(kind)
    head = random_head(model)
    if head_kind == "zero_shot":
        head = ZeroShotHead(nn.functional.normalize(torch.randn(model.cfg.backbone.width, len(CLASSES)), dim=0))
    teacher = small_model("dual", seed=1).encoder.trunk  # any trunk with the same width serves as the reference
    data = shard(tmp_path / "eval.tar", count=10)
    loader = lambda: build_loader(str(data), 64, batch_size=4, train=False)  # noqa: E731
    ours = evaluate_codes(model, loader(), max_images=9, semantic=class_score(head, "test", reference=teacher))
    batches = list(loader())
    x, y = torch.cat([b["image"] for b in batches])[:9], torch.cat([b["label"] for b in batches])[:9]
    theirs = forward_figures(model, x, y, head, teacher)
    assert ours["images"] == 9
    assert ours["psnr"] == pytest.approx(theirs["psnr"], abs=1e-4)
    assert ours["ssim"] == pytest.approx(theirs["ssim"], abs=1e-5)
    assert list(ours["codebook"]) == (["pixel", "semantic"] if kind == "dual" else ["pixel"])
    if kind == "no_semantic":
        assert "semantic_accuracy" not in ours
    else:  # the pooled embedding from encode()'s codes is the forward pass's, prediction by prediction
        assert ours["semantic_accuracy"] == theirs["semantic_accuracy"]
        assert ours["teacher_accuracy"] == theirs["teacher_accuracy"]
        x = next(iter(loader()))["image"]
        with torch.no_grad():
            torch.testing.assert_close(model.decode_semantic(model.encode(x)[1]), model(x).pooled)


def test_fid_code_path_matches_hand_computed_distance(tmp_path):
    model = small_model()
    fid = ext.build_fid(feature=PooledColour())
    batches = build_loader(str(image_folder(tmp_path / "imgs", count=16)), 64, batch_size=5, train=False)
    result = evaluate_codes(model, batches, fid=fid)
    x = torch.cat([b["image"] for b in build_loader(str(tmp_path / "imgs"), 64, batch_size=16, train=False)])
    with torch.no_grad():
        x_hat = model.decode(model.encode(x)[0])
    feats = [PooledColour()(to_uint8(t)).double().numpy() for t in (x, x_hat)]
    assert result["rfid"] == pytest.approx(frechet(*feats), rel=1e-3, abs=1e-6)
    assert result["rfid"] > 1e-3  # a random tokenizer's reconstructions are far from the originals
    assert result["rfid_features"] == "custom: PooledColour"


def test_fid_refuses_clearly_without_package_or_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(ext.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ext.MetricUnavailable, match="torch-fidelity.*pip install torch-fidelity") as err:
        ext.build_fid()
    assert ext.INCEPTION_FILE in str(err.value)
    monkeypatch.setattr(ext.importlib.util, "find_spec", lambda name: object())  # as if installed
    missing = tmp_path / "inception.pth"
    with pytest.raises(ext.MetricUnavailable, match=f"weights file {missing}, which does not exist"):
        ext.build_fid(inception_weights=missing)


def test_zero_shot_refuses_clearly():
    # offline here: SigLIP's tokenizer needs `transformers` + hub files, its text tower the hub weights
    with pytest.raises(ext.MetricUnavailable, match="transformers|text tower weights"):
        ext.build_zero_shot_head("ViT-SO400M-14-SigLIP-384", "webli", ["cat", "dog"])
    with pytest.raises(ext.MetricUnavailable, match="has none"):
        ext.build_zero_shot_head("tiny", "webli", ["cat"])


def random_teacher(folder) -> TinySigLIP:
    torch.manual_seed(0)
    teacher = TinySigLIP().eval()  # random: the code path is under test, not the teacher
    save_teacher(teacher, {}, str(folder))
    return teacher


def test_tinyworld_zero_shot_through_the_codes_equals_the_forward_path(tmp_path):
    model, teacher = small_model(), random_teacher(tmp_path / "t")
    data = shard(tmp_path / "eval.tar", count=10)  # keys name tiny-world eval samples 0..9
    ours = evaluate_codes(model, build_loader(str(data), 64, batch_size=4, train=False), max_images=9,
                          semantic=tinyworld_score(teacher))
    images, metas = make_samples(0, 9, "eval")
    labels, heads = attribute_labels(metas), attribute_heads(teacher)
    with torch.no_grad():
        pooled, reference = model(to_tensor(images)).pooled, teacher.encode_image(to_tensor(images))
    for name, head in heads.items():
        assert ours["semantic"][name] == (head(pooled).argmax(-1).numpy() == labels[name]).mean()
        assert ours["teacher_semantic"][name] == (head(reference).argmax(-1).numpy() == labels[name]).mean()
    assert ours["semantic_accuracy"] == pytest.approx(np.mean(list(ours["semantic"].values())))
    assert set(ours["semantic"]) == {"shape", "colour", "fill", "background"}
    assert 0 < ours["retrieval"]["chance"] < 1 and 0 <= ours["retrieval"]["r1"] <= 1


def test_cli_on_run_folder_writes_table_and_json(tmp_path, capsys):
    model, weights = saved_model(tmp_path / "weights")
    run = tmp_path / "run"
    shutil.copytree(weights, run / "model")
    teacher = random_teacher(tmp_path / "t")
    data = shard(tmp_path / "eval.tar", count=7)
    out = tmp_path / "eval.json"
    code = ev.main([str(run), "--data", str(data), "--batch-size", "3", "--device", "cpu", "--teacher",
                    str(tmp_path / "t"), "--fid", "--json", str(out)], fid_feature=PooledColour())
    assert code == 0
    table = capsys.readouterr().out
    for label in ("PSNR (dB, RGB [0,1], range 1)", "zero-shot top-1 colour (from codes)", "rFID (custom",
                  "image -> caption R@1"):
        assert label in table
    result = json.loads(out.read_text())
    assert result["checkpoint"] == str(run / "model") and result["images"] == 7
    direct = evaluate_codes(model, build_loader(str(data), 64, 3, train=False), semantic=tinyworld_score(teacher))
    for key in ("psnr", "ssim", "semantic_accuracy", "teacher_accuracy"):
        assert result[key] == pytest.approx(direct[key])
    assert result["semantic"] == pytest.approx(direct["semantic"]) and result["retrieval"] == direct["retrieval"]
    assert result["codebook"] == direct["codebook"]
    assert len(result["codebook"]["semantic"]["utilisation"]) == model.cfg.semantic_quantizer.depth


def test_cli_refuses_a_shape_classifier_as_teacher(tmp_path, capsys):
    from dualtoken_lite.tinyworld.paths import SHAPE_CLASSIFIER_DIR

    _, ckpt = saved_model(tmp_path / "model")
    data = shard(tmp_path / "eval.tar", count=2)
    assert ev.main([str(ckpt), "--data", str(data), "--device", "cpu", "--teacher", str(SHAPE_CLASSIFIER_DIR)]) == 2
    assert "without a text tower" in capsys.readouterr().err


def test_cli_refuses_missing_lpips_and_zero_shot_before_reading_data(tmp_path, monkeypatch, capsys):
    _, ckpt = saved_model(tmp_path / "model")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: no VGG16 file
    args = [str(ckpt), "--data", str(tmp_path / "no-such-data"), "--device", "cpu", "--teacher", "none"]
    assert ev.main([*args, "--lpips"]) == 2
    assert "vgg16-397923af.pth" in capsys.readouterr().err
    assert ev.main([*args, "--zero-shot"]) == 2
    assert "zero-shot needs an open_clip SigLIP model" in capsys.readouterr().err
