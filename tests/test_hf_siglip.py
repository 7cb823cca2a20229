"""transformers SigLIP / SigLIP2 towers load into our timm trunk: transformers' own forward is the reference.

Tiny random towers are built with ``transformers``, every parameter perturbed (so a swapped norm or a transposed
split shows), saved with ``save_pretrained`` and loaded through ``backbone.pretrained``; the hidden state after
every block and the pooled output must equal transformers' to 1e-5, with the tanh GELU transformers' SigLIP
runs, also after a DualToken built on such a tower is saved and loaded again.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
import transformers

from dualtoken_lite.model.backbone import VisionTower, build_trunk, tapped_forward, trunk_activation
from dualtoken_lite.model.config import BackboneConfig, ModelConfig, model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.hf_siglip import hf_to_timm, require_transformers, resolve_hf_folder
from dualtoken_lite.model.pretrained import CheckpointError
from dualtoken_lite.settings import ConfigError
from dualtoken_lite.training.setup import build_teacher

TOWER = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, patch_size=8)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its initial value (LayerNorms away from 1 / 0, biases away from 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1


def ours(folder, size: int) -> tuple[dict[int, torch.Tensor], torch.Tensor, BackboneConfig]:
    cfg = BackboneConfig(arch="hf-test", pretrained=str(folder), image_size=size, patch_size=8, width=64, layers=3,
                         heads=4, mlp_ratio=1.5, activation="gelu_tanh")  # transformers' default gelu_pytorch_tanh
    tower = VisionTower(cfg).eval()
    with torch.no_grad():
        taps, pooled = tapped_forward(tower, images(size), [1, 2, 3])
    return taps, pooled, cfg


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(image_size=32, **TOWER)
    model = perturbed(transformers.SiglipVisionModel(config), seed=1)
    folder = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(folder)
    return folder, model


def test_siglip_tower_equals_transformers_forward(siglip_folder):
    folder, model = siglip_folder
    taps, pooled, _ = ours(folder, 32)
    with torch.no_grad():
        ref = model(pixel_values=images(32), output_hidden_states=True)
    for layer in (1, 2, 3):  # hidden_states[0] is the embedding output, [l] the output of block l
        torch.testing.assert_close(taps[layer], ref.hidden_states[layer], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [32, 48], ids=["native-grid", "resized-grid"])
def test_siglip2_naflex_tower_equals_transformers_forward(tmp_path, size):
    """NaFlex: flat patches in (row, col, channel) order, and the 4x4 position grid resized to 6x6 at 48 px."""
    torch.manual_seed(0)
    config = transformers.Siglip2VisionConfig(num_patches=16, **TOWER)
    model = perturbed(transformers.Siglip2VisionModel(config), seed=2)
    model.save_pretrained(tmp_path)
    taps, pooled, _ = ours(tmp_path, size)
    x, grid = images(size), size // 8
    patches = x.reshape(2, 3, grid, 8, grid, 8).permute(0, 2, 4, 3, 5, 1).reshape(2, grid * grid, 8 * 8 * 3)
    with torch.no_grad():
        ref = model(pixel_values=patches, pixel_attention_mask=torch.ones(2, grid * grid, dtype=torch.long),
                    spatial_shapes=torch.tensor([[grid, grid]] * 2), output_hidden_states=True)
    for layer in (1, 2, 3):
        torch.testing.assert_close(taps[layer], ref.hidden_states[layer], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, rtol=1e-5, atol=1e-5)


def test_teacher_from_the_same_folder_is_the_same_frozen_tower(siglip_folder):
    folder, _ = siglip_folder
    _, _, cfg = ours(folder, 32)
    trunk = build_trunk(cfg)
    teacher, head = build_teacher(str(folder), model=None)
    assert head is None and not any(p.requires_grad for p in teacher.parameters())
    for (name, a), (_, b) in zip(trunk.state_dict().items(), teacher.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_full_siglip_model_folder_loads_its_vision_tower(tmp_path):
    """A SiglipModel (text + vision, as google/siglip2-so400m-patch14-384 is published) loads its vision part."""
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        vision_config=dict(image_size=32, **TOWER),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=8),
    )
    model = perturbed(transformers.SiglipModel(config), seed=4)
    model.save_pretrained(tmp_path)
    taps, pooled, _ = ours(tmp_path, 32)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=images(32), output_hidden_states=True)
    torch.testing.assert_close(taps[2], ref.hidden_states[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, rtol=1e-5, atol=1e-5)


def test_a_tower_that_disagrees_with_the_config_is_refused(siglip_folder):
    folder, _ = siglip_folder
    cfg = BackboneConfig(arch="hf-test", pretrained=str(folder), image_size=32, patch_size=8, width=64, layers=4,
                         heads=4, mlp_ratio=1.5, activation="gelu_tanh")
    with pytest.raises(ConfigError, match="layers: config 4 vs hf-test 3"):
        build_trunk(cfg)
    with pytest.raises(ConfigError, match="activation: config gelu vs hf-test gelu_tanh.*activation gelu_tanh"):
        build_trunk(dataclasses.replace(cfg, layers=3, activation="gelu"))


def small_model_config(folder) -> ModelConfig:
    """A DualToken on the 3-block test tower: taps 1 (pixel) and 3 (semantic), a 4 x 4 grid decoded to 32 px."""
    cfg = model_preset("tiny")
    cfg.backbone = BackboneConfig(arch="tiny", pretrained=str(folder), image_size=32, patch_size=8, width=64,
                                  layers=3, heads=4, mlp_ratio=1.5, activation="gelu_tanh")
    cfg.pixel_layer, cfg.shortcut_layer, cfg.semantic_layer, cfg.decoder_latent_grid = 1, None, 3, 4
    for q in (cfg.pixel_quantizer, cfg.semantic_quantizer):
        q.codebook_size = 16
    return cfg


def test_a_model_on_a_transformers_tower_keeps_its_gelu_through_save_and_load(siglip_folder, tmp_path):
    """The tower is rebuilt from its name on loading: its tanh GELU must come back from config.json."""
    torch.manual_seed(0)
    model = DualToken(small_model_config(siglip_folder[0])).eval()
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["format_version"] == 2 and saved["model"]["backbone"]["activation"] == "gelu_tanh"
    loaded = DualToken.from_pretrained(tmp_path / "m")
    assert trunk_activation(loaded.encoder.trunk) == "gelu_tanh"
    with torch.no_grad():
        assert torch.equal(loaded.embed(images(32)), model.embed(images(32)))


def test_a_folder_saved_before_the_activation_was_stored_loads_as_it_did(siglip_folder, tmp_path):
    """Format version 1 had no activation field and always rebuilt the tower with exact GELU."""
    torch.manual_seed(0)
    DualToken(small_model_config(siglip_folder[0])).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["model"]["backbone"]["activation"]
    config["format_version"], config["model"]["proj_pool_heads"] = 1, False  # as version 1 wrote it
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = DualToken.from_pretrained(tmp_path / "m")
    assert loaded.cfg.backbone.activation == "gelu" and trunk_activation(loaded.encoder.trunk) == "gelu"
    config["model"]["proj_pool_heads"] = True  # a layout the release never had
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="proj_pool_heads=true.*never had"):
        DualToken.from_pretrained(tmp_path / "m")


def test_every_tensor_is_read_and_extra_ones_are_refused(siglip_folder):
    _, model = siglip_folder
    state = {"vision_model." + k: v for k, v in model.state_dict().items()}  # as inside a SiglipModel
    tensors, log = hf_to_timm(state)
    assert {s for entry in log for s in entry.sources} == set(state)
    assert tensors.keys() == build_trunk(ours(siglip_folder[0], 32)[2]).state_dict().keys()
    with pytest.raises(KeyError, match="no place"):
        hf_to_timm({**state, "vision_model.encoder.layers.0.extra.weight": torch.zeros(1)})


def test_missing_hub_weights_and_missing_transformers_say_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE=1"):
        resolve_hf_folder("hf:dualtoken-lite-tests/no-such-siglip")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'transformers>=4.40'"):
        require_transformers()
