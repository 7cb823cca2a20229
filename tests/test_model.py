"""DualToken on the tiny preset: shapes, codes API, checkpoints, errors, gradient flow, ablations (docs/method.md §2-3)."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dualtoken_lite.model.backbone import teacher_targets
from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.pretrained import CheckpointError
from dualtoken_lite.settings import ConfigError
from dualtoken_lite.training.precision import precision_context


def paper_taps(cfg):
    """Tiny sizes with the paper's pixel taps (block 2 + 0.6 x block 1) and 32 decoder groups, as most tests expect."""
    cfg.pixel_layer, cfg.shortcut_layer, cfg.decoder_norm_groups = 2, 1, 32
    return cfg


def variant(name: str):
    """The tiny preset with the paper's tap structure (pixel block 2 + 0.6 x block 1), and the ablation configs."""
    cfg = paper_taps(model_preset("tiny"))
    if name == "preset":  # the tiny preset as it ships: the pixel branch reads block 1, no shortcut
        cfg = model_preset("tiny")
    if name == "shared":  # one layer, one quantizer for both objectives
        cfg.shortcut_layer, cfg.pixel_layer, cfg.semantic_layer, cfg.shared_quantizer = None, 3, 3, True
    elif name == "no_semantic":
        cfg.semantic_layer = None
    elif name == "no_shortcut":
        cfg.shortcut_layer = None
    elif name == "same_layer_two_codebooks":
        cfg.pixel_layer = cfg.semantic_layer = 4
    elif name == "code_dim_8_depth_2":
        cfg.pixel_quantizer.code_dim = cfg.semantic_quantizer.code_dim = 8
        cfg.pixel_quantizer.depth = cfg.semantic_quantizer.depth = 2
    return cfg


def test_the_tiny_pixel_branch_reads_a_transformer_block():
    """Both objectives train a shared block (the paper's argument): the pixel tap, and a shortcut if any, is a block
    (>= 1), so no path from the patch embedding reaches the pixel branch without passing through the blocks."""
    cfg = model_preset("tiny")
    assert cfg.pixel_layer >= 1
    assert cfg.shortcut_layer is None or cfg.shortcut_layer >= 1
    assert cfg.semantic_layer is not None and cfg.semantic_layer > cfg.pixel_layer


VARIANTS = ["tiny", "preset", "shared", "no_semantic", "no_shortcut", "same_layer_two_codebooks", "code_dim_8_depth_2"]


def build(name: str = "tiny", seed: int = 0) -> DualToken:
    torch.manual_seed(seed)
    return DualToken(variant(name))


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def train_a_step(model: DualToken) -> None:
    """One forward in training mode + codebook update, so the codebooks hold data-initialised codes."""
    model.train()
    with torch.no_grad():
        model(images(4, seed=1))
    model.update_codebooks()
    model.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_and_codes_api(name):
    model = build(name)
    train_a_step(model)
    cfg, x = model.cfg, images()
    out = model(x)
    D = cfg.pixel_quantizer.depth
    assert out.reconstruction.shape == (2, 3, 64, 64)
    assert out.pixel_codes.shape == (2, 8, 8, D) and out.pixel_codes.dtype == torch.long
    assert out.pixel.quantized.shape == (2, 8, 8, cfg.pixel_quantizer.code_dim)
    pixel_codes, semantic_codes = model.encode(x)
    torch.testing.assert_close(model.decode(pixel_codes), out.reconstruction, rtol=0, atol=1e-6)
    assert torch.equal(pixel_codes, out.pixel_codes)
    # the first d depths: the decoder on their partial sum, from the full codes or from just those d
    first = model.decode_quantized(model.pixel_quantizer.decode(pixel_codes, depths=1))
    assert torch.equal(model.decode(pixel_codes, depths=1), first)
    assert torch.equal(model.decode(pixel_codes[..., :1], depths=1), first)
    if cfg.semantic_layer is None:
        assert out.semantic is None and out.semantic_codes is None and semantic_codes is None
        assert out.semantic_features is None and out.pooled is None
        with pytest.raises(RuntimeError, match="semantic_layer=None"):
            model.embed(x)
        return
    assert out.semantic_codes.shape == (2, 8, 8, model.semantic_quantizer.depth)  # shared: the pixel quantizer
    assert out.semantic_features.shape == (2, 64, 128) and out.pooled.shape == (2, 128)
    assert torch.equal(semantic_codes, out.semantic_codes)
    torch.testing.assert_close(model.embed(x), out.pooled, rtol=0, atol=0)
    # the pooled embedding is a function of the semantic codes alone (the re-entry replaces the hidden state)
    torch.testing.assert_close(model.decode_semantic(semantic_codes), out.pooled, rtol=0, atol=1e-6)
    if name == "shared":
        assert out.semantic is out.pixel and model.semantic_quantizer is model.pixel_quantizer
        assert model.semantic_proj is None
        assert not any(k.startswith("semantic_quantizer.") for k in model.state_dict())


def test_batch_independence():
    """Each image's outputs do not depend on the other images of the batch (eval mode)."""
    model = build().eval()
    x = images(3)
    full, single = model(x), model(x[1:2])
    # a batch of 3 and a batch of 1 may take different matmul kernels, which sum in different orders (1.2e-5 apart
    # on an AVX2 CPU); a leak between images would show at the scale of the outputs themselves
    torch.testing.assert_close(full.reconstruction[1:2], single.reconstruction, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(full.pooled[1:2], single.pooled, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["tiny", "shared"])
def test_save_load_round_trip_is_exact(tmp_path, name):
    model = build(name)
    train_a_step(model)
    model.cfg.backbone.pretrained = "/somewhere/teacher.safetensors"  # provenance only: not fetched on load
    model.save_pretrained(tmp_path / "ck")
    loaded = DualToken.from_pretrained(tmp_path / "ck")
    assert loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("codebooks.0.embed" in k for k in a) and any("cluster_size" in k for k in a)
    x = images()
    assert torch.equal(model(x).reconstruction, loaded(x).reconstruction)
    if name == "shared":
        assert loaded.semantic_quantizer is loaded.pixel_quantizer


def test_checkpoint_mismatch_is_an_error(tmp_path):
    model = build()
    folder = model.save_pretrained(tmp_path / "ck")
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("decoder.conv_out.weight")
    weights["extra.tensor"] = torch.zeros(1)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: decoder.conv_out.weight; unexpected keys: extra.tensor"):
        DualToken.from_pretrained(folder)

    folder = model.save_pretrained(tmp_path / "ck2")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["pixel_quantizer"]["codebook_size"] = 256
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatches: pixel_quantizer.codebooks.0.cluster_size: file \(512,\)"):
        DualToken.from_pretrained(folder)
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="newer than this code"):
        DualToken.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        DualToken.from_pretrained(tmp_path / "nowhere")


def bad(**kw):
    cfg = paper_taps(model_preset("tiny"))
    for k, v in kw.items():
        if "." in k:
            part, field = k.split(".")
            setattr(getattr(cfg, part), field, v)
        else:
            setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize(
    "cfg,match",
    [
        (bad(pixel_layer=7), r"pixel_layer=7 is outside the backbone's blocks 1..6"),
        (bad(semantic_layer=0), r"semantic_layer=0 is outside"),
        (bad(shortcut_layer=2), "shortcut_layer=2 must come before pixel_layer=2"),
        (bad(semantic_layer=1, shortcut_layer=None), "semantic_layer=1 comes before pixel_layer=2"),
        (bad(shared_quantizer=True), "shared_quantizer=True needs pixel_layer == semantic_layer"),
        (bad(shared_quantizer=True, semantic_layer=None), "shared_quantizer=True needs a semantic branch"),
        (bad(**{"backbone.image_size": 60}), "not divisible by backbone.patch_size=8"),
        (bad(proj_head_dim=48), "multiple of proj_head_dim=48"),
        (bad(**{"pixel_quantizer.code_dim": 256}), "pixel_quantizer.code_dim=256 exceeds backbone.width=128"),
        (bad(**{"semantic_quantizer.depth": 0}), r"semantic_quantizer.depth=0 must be >= 1"),
        (bad(decoder_channels=24), "must be a multiple of 32"),
        (bad(decoder_latent_grid=4), r"x 2\^3 upsamplings != image_size=64"),
    ],
)
def test_bad_configs_raise(cfg, match):
    with pytest.raises(ConfigError, match=match):
        DualToken(cfg)


def test_bad_inputs_raise():
    model = build().eval()
    with pytest.raises(ValueError, match=r"\(32, 32\) pixels but this model takes 64x64"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="3 RGB channels"):
        model.encode(torch.rand(1, 4, 64, 64))
    D = model.cfg.pixel_quantizer.depth
    codes = torch.zeros(1, 8, 8, D, dtype=torch.long)
    with pytest.raises(ValueError, match=r"must lie in \[0, 512\), got values in \[512, 512\]"):
        model.decode(codes + 512)
    with pytest.raises(ValueError, match=r"values in \[-1, -1\]"):
        model.decode(codes - 1)
    with pytest.raises(ValueError, match=rf"pixel_codes must have shape \(B, 8, 8, {D}\)"):
        model.decode(torch.zeros(1, 8, 8, D - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model.decode(codes.float())
    with pytest.raises(ValueError, match=r"semantic_codes must have shape \(B, 8, 8, 4\)"):
        model.decode_semantic(torch.zeros(1, 64, 4, dtype=torch.long))


def grad_map(model: DualToken) -> dict[str, bool]:
    """Which parts received a non-zero gradient."""
    trunk = model.encoder.trunk
    parts = {f"block{i + 1}": b for i, b in enumerate(trunk.blocks)}
    parts.update(embed=trunk.patch_embed, head=trunk.attn_pool, norm=trunk.norm)
    for name in ("pixel_proj", "shortcut_proj", "semantic_proj", "pixel_post_proj", "semantic_post_proj",
                 "post_quant_block", "decoder"):
        if getattr(model, name) is not None:
            parts[name] = getattr(model, name)
    return {k: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()) for k, m in parts.items()}


def reached(model, loss) -> set[str]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {k for k, v in grad_map(model).items() if v}


def test_gradient_flow():
    """Reconstruction reaches blocks 1..L_pix only; semantic losses reach blocks 1..L_sem (and, through the pooled
    embedding, the blocks after it and the head); the codebooks get no gradient; the teacher gets none."""
    model = build().train()  # tiny: shortcut 1, pixel 2, semantic 5 of 6 blocks
    teacher = copy.deepcopy(model.encoder.trunk).requires_grad_(False)
    x = images()
    out = model(x)
    recon = {"embed", "block1", "block2", "pixel_proj", "shortcut_proj", "pixel_post_proj", "post_quant_block",
             "decoder"}
    assert reached(model, out.reconstruction.pow(2).mean()) == recon
    out = model(x)
    assert reached(model, out.pixel.commitment) == {"embed", "block1", "block2", "pixel_proj", "shortcut_proj"}
    hidden, pooled = teacher_targets(teacher, x, layer=5)
    out = model(x)
    upto_sem = {"embed", *(f"block{i}" for i in range(1, 6)), "semantic_proj", "semantic_post_proj"}
    assert reached(model, (out.semantic_features - hidden).pow(2).mean()) == upto_sem
    out = model(x)
    assert reached(model, (out.pooled - pooled).pow(2).mean()) == upto_sem | {"block6", "norm", "head"}
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not b.requires_grad for b in model.pixel_quantizer.buffers())


def test_gradient_flow_shared_quantizer():
    """Ablation: one layer and one codebook, so both objectives pull on the same pre-quant projection."""
    model = build("shared").train()  # pixel = semantic = 3
    out = model(images())
    assert "pixel_proj" in reached(model, out.pooled.pow(2).mean())
    out = model(images())
    assert reached(model, out.reconstruction.pow(2).mean()) >= {"block3", "pixel_proj"}


@pytest.mark.parametrize("bf16", [False, True])
def test_gradient_checkpointing_gives_same_grads(bf16):
    """Also under the CPU's bf16 step, whose math attention kernel the recomputation in backward must use too."""
    a = build()
    b = build()
    b.cfg.backbone.grad_checkpointing = True  # the tower reads its config at run time
    grads = []
    for m in (a, b):
        m.train()
        with precision_context("cpu", bf16):
            out = m(images())
            loss = out.reconstruction.float().pow(2).mean() + out.pooled.float().pow(2).mean()
        loss.backward()
        grads.append(m.encoder.trunk.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", ["tiny", "shared"])
def test_update_codebooks_once_per_quantizer(name):
    model = build(name).train()
    before = model.pixel_quantizer.codebooks[0].embed.clone()
    model(images())
    logs = model.update_codebooks()
    assert logs["pixel/updated"] == 1.0
    assert ("semantic/updated" in logs) == (name != "shared")
    assert int(model.pixel_quantizer.codebooks[0].steps) == 1  # shared quantizer: still one update per step
    assert not torch.equal(before, model.pixel_quantizer.codebooks[0].embed)
    assert model.update_codebooks()["pixel/updated"] == 0.0  # nothing new accumulated

