"""Decoder path (docs/method.md §2): shapes, exact paper-scale parameter counts, resize, global receptive field."""

import pytest
import torch

from dualtoken_lite.model.decoder import ConvDecoder, PostQuantResBlock, group_norm, resize_to_latent_grid
from dualtoken_lite.model.group_norm import set_fast_group_norm


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


def _grads_of(dec: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward + backward of a fixed loss: (output, [input grad] + every parameter's grad), grads zeroed after."""
    z = z.detach().requires_grad_()
    y = dec(z)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = [z.grad] + [p.grad.clone() for p in dec.parameters()]
    dec.zero_grad(set_to_none=True)
    return y.detach(), grads


@pytest.mark.parametrize("channels", [32, 64, 128])  # 1, 2 and 4 channels per group
def test_channels_last_group_norm_equals_pytorch(channels):
    """The closed-form channels_last backward gives PyTorch's GroupNorm output and gradients (float rounding)."""
    torch.manual_seed(0)
    norm = group_norm(channels)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    x = (torch.randn(3, channels, 8, 8) * 3 + 1).contiguous(memory_format=torch.channels_last)
    y_ref, g_ref = _grads_of(norm, x)
    set_fast_group_norm(norm, True)
    y, g = _grads_of(norm, x)
    assert y.is_contiguous(memory_format=torch.channels_last) and g[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the forward is PyTorch's own kernel
    for a, b in zip(g, g_ref):  # the closed form cancels terms: float rounding on the scale of each gradient
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * float(b.abs().max()))


def test_fast_group_norm_leaves_the_decoder_unchanged():
    """Decoder output and every gradient with the fast GroupNorm backward equal the plain ones within 1e-5."""
    torch.manual_seed(0)
    dec = torch.nn.Sequential(PostQuantResBlock(64, 64), ConvDecoder(64, 32, (2, 1, 1), res_blocks=1))
    z = torch.randn(2, 16, 64).transpose(1, 2).reshape(2, 64, 4, 4)  # channels_last, as DualToken lays it out
    y_ref, g_ref = _grads_of(dec, z)
    set_fast_group_norm(dec, True)
    y, g = _grads_of(dec, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    scale = max(float(a.abs().max()) for a in g_ref)
    for a, b in zip(g, g_ref):  # conv biases before a GroupNorm have true gradient 0: compare on the common scale
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)


def test_fast_group_norm_is_fp32_under_bf16_autocast():
    """Under CPU bf16 autocast the fast norm computes and returns fp32 (as CUDA autocast does for group_norm)."""
    norm = group_norm(32)
    set_fast_group_norm(norm, True)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16
