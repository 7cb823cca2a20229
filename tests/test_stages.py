"""Training stages on the real tiny model: exactly the declared parameters freeze, and one full training step
(loss, backward, optimizer, codebook update) runs in every stage, stage 2 included."""

import copy

import pytest
import torch

from dualtoken_lite.losses import terms as L
from dualtoken_lite.losses.gan import PatchDiscriminator
from dualtoken_lite.losses.stages import STAGES, apply_stage, frozen_block_count, get_stage, stage_train_mode
from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.training.presets import loss_preset

PIXEL_PARTS = ("pixel_proj.", "shortcut_proj.", "pixel_post_proj.", "post_quant_block.", "decoder.", "pixel_quantizer.")


def tiny_config(variant: str):
    cfg = model_preset("tiny")
    cfg.pixel_layer, cfg.shortcut_layer = 2, 1  # the paper's tap structure (stage 2 freezes through the shortcut)
    if variant == "deep-shortcut":  # stage 2 freezes blocks 1..3 and leaves block 4, which feeds the pixel tap
        cfg.shortcut_layer, cfg.pixel_layer = 3, 4
    return cfg


def expected_frozen(name: str, stage: int, cfg) -> bool:
    """The stage table of docs/method.md §3, written out independently of stages.py."""
    embedding = name.startswith(("encoder.trunk.patch_embed.", "encoder.trunk.pos_embed"))
    block = int(name.split(".")[3]) + 1 if name.startswith("encoder.trunk.blocks.") else None  # 1-indexed
    if stage == 0:
        return embedding or (block is not None and block <= cfg.semantic_layer)
    if stage == 1:
        return False
    through_shortcut = block is not None and block <= cfg.shortcut_layer  # the release: layers[0:layer_shortcut]
    return embedding or through_shortcut or name.startswith(PIXEL_PARTS)


@pytest.fixture(scope="module", params=["tiny", "deep-shortcut"])
def model(request):
    torch.manual_seed(0)
    return DualToken(tiny_config(request.param))


@pytest.mark.parametrize("stage", [2, 0, 1])  # 1 last: each application starts from "train everything"
def test_apply_stage_freezes_exactly_what_is_declared(model, stage):
    summary = apply_stage(model, stage)
    wrong = [n for n, p in model.named_parameters() if p.requires_grad == expected_frozen(n, stage, model.cfg)]
    assert not wrong, wrong[:5]
    assert summary.trainable + summary.frozen == sum(p.numel() for p in model.parameters())
    assert summary.frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert f"stage {stage}" in str(summary)


def test_block_counts_follow_the_config_at_paper_scale():
    cfg = model_preset("so400m-384")
    assert frozen_block_count(STAGES[0], cfg) == 26  # blocks 1..26 of 27
    assert frozen_block_count(STAGES[1], cfg) == 0
    assert frozen_block_count(STAGES[2], cfg) == 4  # blocks 1..4, the release's encoder.layers[0:layer_shortcut]
    cfg.shortcut_layer = None
    assert frozen_block_count(STAGES[2], cfg) == 6  # no shortcut: blocks 1..pixel_layer 6
    cfg.semantic_layer = None
    with pytest.raises(ValueError, match="semantic_layer=None"):
        frozen_block_count(STAGES[0], cfg)


def test_stage_terms_and_bad_stage():
    assert "gan" not in STAGES[0].terms and "gan" in STAGES[1].terms
    assert STAGES[2].terms == {"semantic", "commit_semantic"}
    assert get_stage(STAGES[2]) is STAGES[2]
    with pytest.raises(ValueError, match="choose 0, 1 or 2"):
        get_stage(3)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_one_training_step_runs_in_every_stage(stage):
    torch.manual_seed(0)
    model = DualToken(tiny_config("deep-shortcut"))
    teacher = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    disc = PatchDiscriminator(base_channels=32)
    cfg = loss_preset("tiny")
    apply_stage(model, stage)
    stage_train_mode(model, stage)
    assert model.pixel_quantizer.training == (stage != 2)  # stage 2's pixel codebook must not move
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    model(images)  # step 1 initialises the codebooks from data
    model.update_codebooks()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    codebooks = {n: b.clone() for n, b in model.named_buffers() if n.endswith(".embed")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    targets = L.targets_from_teacher(teacher, images, model.cfg.semantic_layer)
    total, logs = L.tokenizer_loss(model(images), images, cfg, teacher=targets, discriminator=disc,
                                   last_layer=model.decoder.conv_out.weight, stage=stage, gan_weight=0.75)
    total.backward()
    opt.step()
    model.update_codebooks()
    assert torch.isfinite(total) and ("gan_g" in logs) == (stage == 1)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    for name, p in model.named_parameters():
        if expected_frozen(name, stage, model.cfg):
            assert name not in moved and p.grad is None, name
    assert any(n.startswith("semantic_proj.") for n in moved)  # the semantic branch trains in every stage
    assert any(n.startswith("decoder.") for n in moved) == (stage != 2)
    pixel_embed = [n for n in codebooks if n.startswith("pixel_quantizer.")]
    assert all(torch.equal(dict(model.named_buffers())[n], codebooks[n]) for n in pixel_embed) == (stage == 2)
