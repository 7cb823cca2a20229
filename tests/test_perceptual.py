"""LPIPS-VGG: real weights from the hub cache or a named file, a refusal otherwise, an explicit random opt-in
that labels itself, no network access on any path, and no gradients into the metric's parameters."""

import urllib.request
from pathlib import Path

import pytest
import torch

from dualtoken_lite.losses import perceptual as P


@pytest.fixture(autouse=True)
def offline_and_empty_cache(tmp_path, monkeypatch):
    """An empty torch hub folder, and any download attempt fails the test."""

    def no_network(*args, **kwargs):
        raise AssertionError("a network download was attempted")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.fixture(scope="module")
def fake_vgg16_file(tmp_path_factory) -> Path:
    """A file in torchvision's VGG16 layout (features.* only) with recognisable random weights."""
    import torchvision

    torch.manual_seed(123)
    features = torchvision.models.vgg16(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / P.VGG16_FILENAME
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def random_lpips() -> P.Perceptual:
    return P.Perceptual(allow_random_backbone=True)


def test_refuses_without_weights_and_says_where_to_put_them():
    with pytest.raises(P.PerceptualWeightsMissing) as err:
        P.Perceptual()
    message = str(err.value)
    assert str(P.default_vgg16_path()) in message and P.VGG16_FILENAME in message
    assert "allow_random_lpips" in message


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(P.PerceptualWeightsMissing, match="is not a file"):
        P.Perceptual(vgg_weights=tmp_path / "missing.pth", allow_random_backbone=True)


def test_random_backbone_only_on_request_and_labelled(random_lpips):
    assert random_lpips.label == "lpips-vgg(random backbone)"
    assert random_lpips.weights_path is None
    assert "random backbone" in repr(random_lpips)


def test_packaged_linear_layers_load_offline(random_lpips):
    import lpips

    lin = torch.load(Path(lpips.__file__).parent / "weights/v0.1/vgg.pth", map_location="cpu")
    for k in range(5):
        torch.testing.assert_close(random_lpips.lpips.state_dict()[f"lin{k}.model.1.weight"], lin[f"lin{k}.model.1.weight"])


@pytest.mark.parametrize("where", ["hub-cache", "named-file"])
def test_real_weights_are_used_from_cache_or_file(where, fake_vgg16_file):
    if where == "hub-cache":
        P.default_vgg16_path().parent.mkdir(parents=True)
        P.default_vgg16_path().write_bytes(fake_vgg16_file.read_bytes())
        metric = P.Perceptual()
    else:
        metric = P.Perceptual(vgg_weights=fake_vgg16_file)
    assert metric.label == "lpips-vgg"
    expected = torch.load(fake_vgg16_file)
    net = metric.lpips.net.state_dict()
    for k, (lo, hi) in enumerate(P.VGG16_SLICES, start=1):
        for i in range(lo, hi):
            if f"features.{i}.weight" in expected:
                assert torch.equal(net[f"slice{k}.{i}.weight"], expected[f"features.{i}.weight"])


def test_a_file_that_is_not_vgg16_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ValueError, match="does not hold torchvision VGG16"):
        P.Perceptual(vgg_weights=bad)


def test_frozen_metric_passes_gradients_to_the_reconstruction_only(random_lpips):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_hat = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    random_lpips.train()  # must stay in eval: dropout in the linear layers never switches on
    assert not random_lpips.training and not random_lpips.lpips.training
    loss = random_lpips(x_hat, x)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in random_lpips.parameters())
    assert random_lpips(x, x).item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(random_lpips(x_hat, x), loss)  # deterministic: no dropout


def test_shape_mismatch_is_explained(random_lpips):
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        random_lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))


def test_the_loss_config_decides_whether_lpips_is_built():
    from dualtoken_lite.training.presets import loss_preset

    assert P.build_perceptual(loss_preset("tiny")) is None  # no perceptual term: no VGG at all
    with pytest.raises(P.PerceptualWeightsMissing):
        P.build_perceptual(loss_preset("so400m-384"))  # asks for the real metric: refuses without weights
