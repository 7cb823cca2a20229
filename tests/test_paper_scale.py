"""The paper-scale presets, randomly initialised: exact docs/method.md §2 parameter counts and one forward at batch 1.

Each preset is built once for this file (~5-12 s, ~4 GB); nothing is trained. Keep pytest single-process.
"""

import pytest
import torch

from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken

# docs/method.md §2, released model with code dim 32. The 256 px tower differs only in its patch and position embeddings.
COUNTS = {
    "pixel_proj": 4_032_608,
    "shortcut_proj": 4_032_608,
    "semantic_proj": 4_032_608,
    "pixel_post_proj": 9_452_288,
    "semantic_post_proj": 9_452_288,
    "post_quant_block": 11_803_904,
    "decoder": 168_449_667,
}
TOWER = {"so400m-384": 428_225_600, "so400m-256": 427_888_064}
SHAPES = {"so400m-384": (384, 27, 8), "so400m-256": (256, 16, 4)}  # image size, grid, RVQ depth


@pytest.fixture(scope="module", params=["so400m-384", "so400m-256"])
def paper(request):
    torch.manual_seed(0)
    model = DualToken(model_preset(request.param)).eval()
    size = SHAPES[request.param][0]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = model(x)
    yield request.param, model, out
    del model, out


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts(paper):
    name, model, _ = paper
    assert n_params(model.encoder) == n_params(model.encoder.trunk) == TOWER[name]
    for part, count in COUNTS.items():
        assert n_params(getattr(model, part)) == count, part
    for quantizer in (model.pixel_quantizer, model.semantic_quantizer):
        (codebook,) = quantizer.codebooks  # one codebook shared by all depths
        assert codebook.embed.shape == (16_384, 32)
    assert len(model.encoder.trunk.blocks) == 27 and model.encoder.trunk.embed_dim == 1152


def test_forward_shapes(paper):
    name, model, out = paper
    size, grid, depth = SHAPES[name]
    assert out.reconstruction.shape == (1, 3, size, size)
    assert out.pixel_codes.shape == out.semantic_codes.shape == (1, grid, grid, depth)
    assert out.semantic_features.shape == (1, grid * grid, 1152)
    assert out.pooled.shape == (1, 1152)
    assert torch.isfinite(out.reconstruction).all() and torch.isfinite(out.pooled).all()
    assert 0 <= int(out.pixel_codes.min()) and int(out.pixel_codes.max()) < 16_384


def test_pooled_is_a_function_of_semantic_codes(paper):
    """The semantic re-entry: blocks L_sem+1..27 + head on the decoded semantic codes give the pooled output."""
    _, model, out = paper
    with torch.no_grad():
        torch.testing.assert_close(model.decode_semantic(out.semantic_codes), out.pooled, rtol=1e-5, atol=1e-5)
