"""Decoder path (docs/method.md §2): shapes, exact paper-scale parameter counts, resize, global receptive field."""

import pytest
import torch

from dualtoken_lite.model.decoder import ConvDecoder, PostQuantResBlock, group_norm, resize_to_latent_grid


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_counts():
    """Built on the meta device (no memory): the released decoder's sizes, to the parameter."""
    with torch.device("meta"):
        assert n_params(PostQuantResBlock(1152, 1024)) == 11_803_904
        assert n_params(ConvDecoder(1024, 128, (8, 4, 4, 1, 1), res_blocks=2)) == 168_449_667


@pytest.mark.parametrize(
    "in_ch,ch,mult,res,grid,size",
    [(128, 64, (2, 1, 1, 1), 1, 8, 64), (64, 32, (2, 1), 0, 4, 8), (1024, 128, (8, 4, 4, 1, 1), 2, 24, 384)],
)
def test_output_shape(in_ch, ch, mult, res, grid, size):
    device = "meta" if size > 64 else "cpu"  # the paper-size shape check runs on the meta device
    with torch.device(device):
        dec = ConvDecoder(in_ch, ch, mult, res)
        out = dec(torch.randn(2, in_ch, grid, grid))
    assert out.shape == (2, 3, size, size)
    assert dec.upsampling == size // grid


def test_post_quant_block_and_resize():
    z = torch.randn(2, 64, 9, 9)
    assert resize_to_latent_grid(z, 9) is z
    r = resize_to_latent_grid(z, 8)
    assert r.shape == (2, 64, 8, 8)
    const = torch.ones(1, 64, 9, 9) * 3.0
    torch.testing.assert_close(resize_to_latent_grid(const, 8), torch.ones(1, 64, 8, 8) * 3.0)
    assert PostQuantResBlock(64, 32)(r).shape == (2, 32, 8, 8)


def test_conv_out_is_the_last_layer():
    """Adding b to conv_out's bias shifts every output pixel by b: nothing (no tanh) comes after it."""
    torch.manual_seed(0)
    dec = ConvDecoder(64, 32, (2, 1), 0).eval()
    z = torch.randn(1, 64, 4, 4)
    y = dec(z)
    with torch.no_grad():
        dec.conv_out.bias += torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(dec(z) - y, torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1).expand_as(y))


def test_receptive_field_is_global():
    """The mid-block attention lets one output pixel depend on every latent position."""
    torch.manual_seed(0)
    dec = ConvDecoder(64, 32, (2, 1, 1), 0)
    z = torch.randn(1, 64, 6, 6, requires_grad=True)
    dec(z)[0, :, 0, 0].sum().backward()
    assert (z.grad.abs().sum(1) > 0).all()


def test_group_norm_needs_multiple_of_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        group_norm(48)
