"""Vision tower (docs/method.md §2): tapping path = the tower's own forward, weight loading routes, teacher targets."""

import dataclasses
import json

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from dualtoken_lite.model.backbone import (
    VisionTower,
    build_tiny_trunk,
    build_trunk,
    check_images,
    tapped_forward,
    teacher_targets,
)
from dualtoken_lite.model.config import BackboneConfig, model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import ConfigError

SMALL_ARCH = "dualtoken-test-siglip-small"  # a small SigLIP-layout open_clip model registered for these tests
SMALL = BackboneConfig(arch=SMALL_ARCH, image_size=32, patch_size=8, width=64, layers=3, heads=2, mlp_ratio=2.0)


@timm.models.register_model
def dualtoken_test_siglip_small(pretrained=False, **kwargs):
    """A 3-block SigLIP-layout ViT under a timm name, so open_clip can build it like the So400m towers."""
    kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, mlp_ratio=2.0,
                             class_token=False, no_embed_class=True, **kwargs)


@pytest.fixture(scope="module")
def small_open_clip(tmp_path_factory):
    """Register SMALL_ARCH with open_clip and build a randomly initialised CLIP model of it."""
    cfg = {
        "embed_dim": 64,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "dualtoken_test_siglip_small",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{SMALL_ARCH}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(1)
    return open_clip.create_model(SMALL_ARCH, pretrained=None).eval()


def tiny_cfg(**kw) -> BackboneConfig:
    return dataclasses.replace(model_preset("tiny").backbone, **kw)


def images(cfg: BackboneConfig, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_tapped_forward_equals_trunk_forward():
    """embed -> blocks one by one -> norm -> MAP head gives exactly the trunk's own forward."""
    torch.manual_seed(0)
    tower = VisionTower(tiny_cfg()).eval()
    x = images(tower.cfg)
    taps, pooled = tapped_forward(tower, x, [5, 2])
    torch.testing.assert_close(pooled, tower.trunk(x), rtol=0, atol=0)
    for layer in (2, 5):  # 1-indexed: layer l is timm's intermediate index l - 1
        (ref,) = tower.trunk.forward_intermediates(x, indices=[layer - 1], norm=False, output_fmt="NLC",
                                                   intermediates_only=True)
        torch.testing.assert_close(taps[layer], ref)
    assert taps[2].shape == (2, 64, 128) and pooled.shape == (2, 128)


def test_tiny_trunk_layout():
    trunk = build_tiny_trunk(tiny_cfg())
    assert trunk.cls_token is None and trunk.attn_pool is not None and trunk.num_classes == 0
    assert len(trunk.blocks) == 6 and trunk.patch_embed.grid_size == (8, 8)


def test_teacher_targets_without_grad():
    torch.manual_seed(0)
    trunk = build_tiny_trunk(tiny_cfg()).eval()
    x = images(tiny_cfg())
    hidden, pooled = teacher_targets(trunk, x, layer=5)
    taps, ref_pooled = tapped_forward(VisionTower(tiny_cfg(), trunk=trunk), x, [5])
    torch.testing.assert_close(hidden, taps[5])
    torch.testing.assert_close(pooled, ref_pooled)
    assert not hidden.requires_grad and not pooled.requires_grad
    assert all(p.grad is None for p in trunk.parameters())


def test_open_clip_local_checkpoint_route(small_open_clip, tmp_path):
    """A saved open_clip checkpoint (keys 'visual.trunk.*', text tower included) loads strictly into the tower;
    the model's tapped path with the quantizers bypassed equals open_clip's own image forward."""
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in small_open_clip.state_dict().items()}, str(path))
    cfg = model_preset("tiny")
    cfg.backbone = dataclasses.replace(SMALL, pretrained=str(tmp_path))  # a folder holding the file
    cfg.pixel_layer, cfg.shortcut_layer, cfg.semantic_layer = 2, 1, 3
    cfg.decoder_latent_grid, cfg.decoder_channel_mult = 4, (2, 1, 1, 1)
    model = DualToken(cfg).eval()
    x = images(SMALL)
    _, pooled = tapped_forward(model.encoder, x, [cfg.pixel_layer, cfg.semantic_layer])
    with torch.no_grad():
        torch.testing.assert_close(pooled, small_open_clip.encode_image(x), rtol=0, atol=0)
    assert model(x).pooled.shape == (2, 64)


def test_open_clip_random_build_matches_config(small_open_clip):
    trunk = build_trunk(SMALL)
    assert isinstance(trunk, VisionTransformer) and len(trunk.blocks) == 3
    with pytest.raises(ConfigError, match="layers: config 4"):
        build_trunk(dataclasses.replace(SMALL, layers=4))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_every_mlp_of_the_tower_runs_the_configured_gelu(small_open_clip, activation):
    """open_clip and timm build SigLIP towers with exact GELU; SigLIP's weights were trained with tanh's."""
    for trunk in (build_trunk(dataclasses.replace(SMALL, activation=activation)),
                  build_trunk(dataclasses.replace(SMALL, arch="tiny", activation=activation))):
        x = torch.randn(3, 64)
        for mlp in (*(block.mlp for block in trunk.blocks), trunk.attn_pool.mlp):
            torch.testing.assert_close(mlp.act(x), F.gelu(x, approximate="tanh" if activation == "gelu_tanh" else "none"),
                                       rtol=0, atol=0)
    assert model_preset("so400m-384").backbone.activation == "gelu_tanh" == model_preset("so400m-256").backbone.activation
    assert model_preset("tiny").backbone.activation == "gelu"  # the shipped tiny teacher was trained with exact GELU


@pytest.mark.parametrize("prefix", ["", "trunk.", "encoder.trunk."])
def test_local_weights_any_prefix(tmp_path, prefix):
    torch.manual_seed(0)
    source = build_tiny_trunk(tiny_cfg())
    path = tmp_path / "w.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_trunk(tiny_cfg(pretrained=str(path)))
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_local_weights_mismatch_is_an_error(tmp_path):
    state = build_tiny_trunk(tiny_cfg(layers=4)).state_dict()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"missing \['blocks.4"):
        build_trunk(tiny_cfg(pretrained=str(path)))
    wide = build_tiny_trunk(tiny_cfg(width=64, heads=2)).state_dict()
    torch.save(wide, path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_trunk(tiny_cfg(pretrained=str(path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        build_trunk(tiny_cfg(pretrained=str(empty)))


def test_webli_fails_fast_offline(monkeypatch):
    """Offline, the open_clip tag is an immediate, explanatory error (no retries, no random weights)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"pretrained='webli'.*local weights file"):
        build_trunk(dataclasses.replace(model_preset("so400m-384").backbone, pretrained="webli"))


def test_bad_backbone_configs():
    with pytest.raises(ConfigError, match="not an open_clip model"):
        build_trunk(dataclasses.replace(SMALL, arch="ViT-Nonexistent"))
    with pytest.raises(ConfigError, match="not a timm trunk with a MAP pooling head"):
        build_trunk(dataclasses.replace(SMALL, arch="ViT-B-32"))
    with pytest.raises(ConfigError, match="no such file"):
        build_trunk(tiny_cfg(pretrained="/nonexistent/teacher.safetensors"))
    with pytest.raises(ConfigError, match="neither an existing local path nor an open_clip tag"):
        build_trunk(dataclasses.replace(model_preset("so400m-384").backbone, pretrained="openai"))


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(2, 3, 32, 32), "resize and center-crop"),
        (torch.rand(2, 1, 64, 64), "3 RGB channels"),
        (torch.rand(2, 4, 64, 64), "3 RGB channels"),
        (torch.rand(3, 64, 64), "3 RGB channels"),
        (torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        check_images(bad, 64)
