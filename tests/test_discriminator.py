"""The patch discriminator: the release's parameter count, logit grid, init and residual shortcut."""

import pytest
import torch
import torch.nn.functional as F

from dualtoken_lite.losses.gan import DiscResBlock, PatchDiscriminator, build_discriminator


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_discriminator_has_the_released_parameter_count():
    assert count_parameters(build_discriminator()) == 1_729_409  # docs/method.md §2 fidelity check


def test_paper_discriminator_gives_a_48x48_logit_map_at_384px():
    with torch.device("meta"):  # shapes only: no 384 px compute on the CPU
        logits = build_discriminator()(torch.zeros(2, 3, 384, 384))
    assert logits.shape == (2, 1, 48, 48)


@pytest.mark.parametrize("size, channels, layers, grid", [(64, 32, 3, 8), (64, 64, 3, 8), (96, 32, 2, 24),
                                                           (40, 32, 3, 5)])
def test_logit_grid_follows_the_strides(size, channels, layers, grid):
    d = PatchDiscriminator(base_channels=channels, n_layers=layers)
    out = d(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, grid, grid)
    assert torch.isfinite(out).all()


def test_conv_weights_start_from_n_0_002_and_norms_from_identity():
    torch.manual_seed(0)
    d = build_discriminator()
    big = d.blocks[2].conv.weight  # 512 x 256 x 3 x 3: 1.18 M samples
    assert abs(big.mean().item()) < 1e-3
    assert big.std().item() == pytest.approx(0.02, rel=0.01)
    for module in d.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.25)
        if isinstance(module, torch.nn.GroupNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))


def test_strided_shortcut_is_a_2x2_average_then_1x1_conv():
    torch.manual_seed(0)
    block = DiscResBlock(32, 64, stride=2)
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.bias.zero_()  # residual branch off: only the shortcut remains
    x = torch.randn(2, 32, 16, 16)
    expected = block.shortcut(F.avg_pool2d(x, 2))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_bad_width_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="multiple of 32"):
        PatchDiscriminator(base_channels=48)
