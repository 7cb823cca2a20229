# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · The decoder: from pixel codes back to pixels
#
# DualToken's pixel branch turns an image into a grid of codes, `(B, H, W, D)`: at each of the H x W token
# positions, D indices into one shared codebook. This notebook follows those integers all the way back to an
# image, printing the shape at every stage, then measures how far one output pixel "sees" into the latent grid,
# and puts the paper-scale sizes beside the tiny ones (docs/method.md §2):
#
# | stage | operation | tiny | so400m-384 |
# |---|---|---|---|
# | codes | integers | (B, 8, 8, 8) | (B, 27, 27, 8) |
# | lookup | $q = \sum_{d} e_{k_d}$ | (B, 8, 8, 32) | (B, 27, 27, 32) |
# | post-quant projection | causal `AttnProjection` d -> C | (B, 64, 128) | (B, 729, 1152) |
# | resize | bilinear to the decoder grid | (B, 128, 8, 8) | (B, 1152, 24, 24) |
# | post-quant ResNet block | C -> C_in | (B, 128, 8, 8) | (B, 1024, 24, 24) |
# | conv decoder | ResBlocks, attention, x2 upsamplings | (B, 3, 64, 64) | (B, 3, 384, 384) |
#
# Notation: B batch, H x W token grid, N = H W, C backbone width, d code dim, D residual depth, K codebook size,
# g decoder grid, (h, w) pixels. The weights here are random: shapes, causality and receptive fields are
# properties of the architecture, not of training.

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from dualtoken_lite.model.decoder import AttnBlock, resize_to_latent_grid
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.presets import model_preset

torch.manual_seed(0)
cfg = model_preset("tiny")
model = DualToken(cfg).eval()
B, G, D = 2, cfg.backbone.grid, cfg.pixel_quantizer.depth
print(f"tiny: {G}x{G} grid, depth {D}, K = {cfg.pixel_quantizer.codebook_size}, d = {cfg.pixel_quantizer.code_dim}")

# %% [markdown]
# ## 1. Codes -> vectors
# A residual quantizer spends D codes per position; the vector they stand for is the **sum** of the D code
# vectors: $q_{ij} = \sum_{d=1}^{D} e_{k_{ijd}}$. With one codebook shared by all depths this is one gather and a
# sum.

# %%
codes = torch.randint(0, cfg.pixel_quantizer.codebook_size, (B, G, G, D))  # (B, H, W, D)
embed = model.pixel_quantizer.codebooks[0].embed  # (K, d), shared by all depths
q = embed[codes].sum(dim=-2)  # (B, H, W, D, d) -> (B, H, W, d)
print("codes", tuple(codes.shape), "-> vectors", tuple(q.shape))
torch.testing.assert_close(q, model.pixel_quantizer.decode(codes))

# %% [markdown]
# ## 2. Post-quant projection: back to the backbone width, causally
# The code vectors are widened to C by an `AttnProjection` (notebook 03 builds one) whose attention is
# **causal in raster order**: position n only attends to positions 0..n. The check: changing the codes of one
# position, n = 27 (row 3, column 3), leaves every output before it untouched and changes it and (through
# attention) those after it.

# %%
seq = q.reshape(B, G * G, -1)  # (B, N, d), raster order
h = model.pixel_post_proj(seq)  # (B, N, C)
codes2 = codes.clone()
codes2[:, 3, 3] = (codes2[:, 3, 3] + 1) % cfg.pixel_quantizer.codebook_size
h2 = model.pixel_post_proj(model.pixel_quantizer.decode(codes2).reshape(B, G * G, -1))
changed = (h - h2).abs().amax(dim=(0, 2)) > 0  # (N,) which positions moved
n = 3 * G + 3
print("post-quant:", tuple(seq.shape), "->", tuple(h.shape), f"| changing position {n} moved positions",
      f"{changed.nonzero().min().item()}..{changed.nonzero().max().item()}")
assert not changed[:n].any() and changed[n:].all()

# %% [markdown]
# ## 3. Resize to the decoder's grid
# The decoder doubles the side at each of its L - 1 upsamplings, so its input grid must be $h / 2^{L-1}$.
# At paper scale 384 / 2^4 = 24, but the token grid is 384 // 14 = 27: the (B, C, 27, 27) map is resized
# **bilinearly** to 24 x 24 (align_corners=False: output cell i samples source coordinate
# (i + 0.5) 27/24 - 0.5). The tiny preset's grid already is the decoder's, so there the resize is the identity.

# %%
z = h.transpose(1, 2).reshape(B, -1, G, G)  # (B, C, H, W)
assert resize_to_latent_grid(z, cfg.decoder_latent_grid) is z  # tiny: 8 -> 8, nothing to do
ramp = torch.arange(27.0).view(1, 1, 1, 27).expand(1, 1, 27, 27)  # value = column index
small = resize_to_latent_grid(ramp, 24)  # (1, 1, 24, 24)
expect = ((torch.arange(24) + 0.5) * 27 / 24 - 0.5).clamp(0, 26)  # where each output column samples
torch.testing.assert_close(small[0, 0, 0], expect)
print("27x27 -> 24x24, first columns sample source x =", [round(v, 3) for v in small[0, 0, 0, :4].tolist()])

# %% [markdown]
# ## 4. Post-quant ResNet block
# A ResNet block whose first conv is 1x1 bridges the backbone width C to the decoder's C_in:
# $y = W_{skip} z + \mathrm{conv}_{3\times3}(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}_{1\times1}(\mathrm{SiLU}(\mathrm{GN}\,z)))))$.
# Built inline with the package's weights, it must give the package's output.

# %%
blk = model.post_quant_block
groups = model.cfg.decoder_norm_groups  # 32 in the paper; 8 for tiny's 32-channel levels (docs/tiny_recipe.md)
inline = blk.conv1(F.silu(F.group_norm(z, groups, blk.norm1.weight, blk.norm1.bias, eps=1e-6)))
inline = blk.conv2(F.silu(F.group_norm(inline, groups, blk.norm2.weight, blk.norm2.bias, eps=1e-6)))
inline = blk.skip(z) + inline  # (B, C_in, g, g)
torch.testing.assert_close(inline, blk(z))
print("post-quant block:", tuple(z.shape), "->", tuple(inline.shape))

# %% [markdown]
# ## 5. The conv decoder, stage by stage
# The taming/VQGAN decoder: `conv_in`, a middle of ResBlock + self-attention + ResBlock, then one level per
# channel multiplier from the lowest resolution up, each with `res_blocks + 1` ResBlocks (followed by attention
# at the lowest resolution only) and a nearest x2 upsample + 3x3 conv between levels; finally GroupNorm, SiLU
# and a 3x3 conv to RGB (no tanh: the losses compare against images in [-1, 1]). Forward hooks print each stage.

# %%
def stage_shapes(model, z):
    """Output shape of every top-level decoder stage for input z (B, C_in, g, g)."""
    dec, shapes = model.decoder, []
    names = ["conv_in", "mid"] + [f"levels.{i}" for i in range(len(dec.levels))] + ["conv_out"]
    hooks = [dec.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.append((n, tuple(o.shape))))
             for n in names]
    out = dec(z)
    for hook in hooks:
        hook.remove()
    return shapes, out


shapes, image = stage_shapes(model, inline)
for name, shape in shapes:
    print(f"{name:10s} {shape}")
assert image.shape == (B, 3, 64, 64)
torch.testing.assert_close(image, model.decode(codes))  # the package's decode does exactly these steps

# %% [markdown]
# ## 6. Receptive field: how much of the latent grid one output pixel sees
# Take the gradient of one output pixel with respect to the decoder's input grid: a cell with zero gradient
# cannot influence that pixel. Three things connect a pixel to latent cells:
# 1. the **3x3 convs**: a bounded window; each conv at the latent resolution widens it by 1 cell of radius,
#    one at 2x the resolution by 1/2 cell, and so on;
# 2. **GroupNorm**: its mean and variance are taken over the whole map, so every cell nudges every pixel a little;
# 3. **self-attention** (the middle block and the lowest level): every position attends to every other.
#
# We switch them on one at a time, on a larger latent grid (the decoder is fully convolutional apart from
# attention) so that the conv window fits inside: convs alone (GroupNorm statistics held constant, attention
# removed), then with GroupNorm's statistics, then the full decoder.

# %%
class FrozenStatsGroupNorm(torch.nn.Module):
    """GroupNorm whose mean and variance are treated as constants: no gradient flows through them."""

    def __init__(self, gn: torch.nn.GroupNorm):
        super().__init__()
        self.gn = gn

    def forward(self, x):
        g = x.view(x.shape[0], self.gn.num_groups, -1)  # (B, groups, C/groups * H * W)
        mean, var = g.mean(-1, keepdim=True).detach(), g.var(-1, unbiased=False, keepdim=True).detach()
        y = ((g - mean) / (var + self.gn.eps).sqrt()).view_as(x)
        return y * self.gn.weight.view(1, -1, 1, 1) + self.gn.bias.view(1, -1, 1, 1)


def variant_of(decoder, attention: bool, norm_stats: bool):
    """A copy of the decoder with attention replaced by the identity and/or GroupNorm statistics frozen."""
    out = copy.deepcopy(decoder)
    for name, m in list(out.named_modules()):
        parent, _, child = name.rpartition(".")
        if isinstance(m, AttnBlock) and not attention:
            setattr(out.get_submodule(parent), child, torch.nn.Identity())
        elif isinstance(m, torch.nn.GroupNorm) and not norm_stats:
            setattr(out.get_submodule(parent), child, FrozenStatsGroupNorm(m))
    return out


def conv_radius(decoder) -> float:
    """Theoretical receptive-field radius, in latent cells, of the decoder's 3x3 convs."""
    last, radius = len(decoder.levels) - 1, 0.0
    for name, m in decoder.named_modules():
        if not (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)):
            continue
        if name.startswith("levels."):  # level i runs at 2^i x the latent resolution, its upsample conv at 2^(i+1)
            ups = int(name.split(".")[1]) + (1 if ".upsample." in name else 0)
        else:
            ups = last if name == "conv_out" else 0  # conv_in and the middle run at the latent resolution
        radius += 0.5**ups  # one 3x3 conv at 2^u x the latent resolution widens the field by 1 / 2^u cells
    return radius


def input_gradient(decoder, grid: int, pixel: tuple[int, int]) -> torch.Tensor:
    """|d output[pixel] / d z| summed over channels, for a random latent z: (grid, grid)."""
    z = torch.randn(1, cfg.decoder_in_channels, grid, grid, generator=torch.Generator().manual_seed(1))
    z.requires_grad_(True)
    decoder(z)[0, :, pixel[0], pixel[1]].sum().backward()
    return z.grad.abs().sum(1)[0]


# %%
big = 32  # latent cells per side: large enough that the bounded conv window fits inside
c = big // 2
pixel = (c * model.decoder.upsampling,) * 2  # the top-left output pixel of latent cell (16, 16)
grads = {
    "3x3 convs only": input_gradient(variant_of(model.decoder, attention=False, norm_stats=False), big, pixel),
    "+ GroupNorm statistics": input_gradient(variant_of(model.decoder, attention=False, norm_stats=True), big, pixel),
    "+ attention (the decoder)": input_gradient(model.decoder, big, pixel),
}
ys, xs = (grads["3x3 convs only"] > 0).nonzero(as_tuple=True)
measured = max((ys - c).abs().max().item(), (xs - c).abs().max().item())
theory = conv_radius(model.decoder)
print(f"3x3 convs only: radius {measured} cells measured, {theory:.2f} in theory (of a {big}x{big} grid)")
assert abs(measured - theory) <= 1.0
assert all((g > 0).all() for name, g in grads.items() if name != "3x3 convs only")  # global dependence

# %% [markdown]
# The field's *size* is not its *shape*. Below, the share of the gradient mass within a square of radius r
# cells around the pixel. The conv window holds all of it within the theoretical radius; GroupNorm's statistics
# and attention leak some mass beyond it, but most of it (over half) stays within 4 cells: even with global
# operations the decoder is mostly local. (Random weights; training reshapes the attention.)

# %%
def mass_within(g: torch.Tensor, r: int) -> float:
    """Share of the gradient mass within a (2r+1)^2 square around the pixel's cell."""
    return (g[c - r : c + r + 1, c - r : c + r + 1].sum() / g.sum()).item()


for name, g in grads.items():
    print(f"{name:26s}", "  ".join(f"r={r}: {mass_within(g, r):6.1%}" for r in (1, 2, 4, 8, 14)))
assert mass_within(grads["3x3 convs only"], int(theory) + 1) > 1 - 1e-6  # all of it (up to float sums)
assert all(mass_within(g, int(theory) + 1) < 1.0 for n, g in grads.items() if n != "3x3 convs only")
assert all(mass_within(g, 4) > 0.5 for g in grads.values())
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
floor = float(torch.log10(grads["3x3 convs only"].max())) - 8
for ax, (name, g) in zip(axes, grads.items()):
    ax.imshow(torch.log10(g + 1e-20).numpy(), vmin=floor)
    ax.set_title(f"log10 |d pixel / d z|\n{name}")
    ax.plot(c, c, "r+")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. The paper-scale decoder beside the tiny one
# The meta device gives shapes and parameter counts without allocating memory, so the paper's
# 168-million-parameter decoder costs nothing here. The counts match the released model's exactly (docs/method.md §2).

# %%
def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def path_table(m: DualToken) -> list[tuple[str, tuple, int]]:
    """(stage, output shape at batch 1, parameters) along the path from quantized codes to pixels."""
    names = ["pixel_post_proj", "post_quant_block", "decoder.conv_in", "decoder.mid"]
    names += [f"decoder.levels.{i}" for i in range(len(m.decoder.levels))] + ["decoder.conv_out"]
    rows = []
    hooks = [m.get_submodule(n).register_forward_hook(
        lambda mod, i, o, n=n: rows.append((n, tuple(o.shape), n_params(mod)))) for n in names]
    g, d = m.cfg.backbone.grid, m.cfg.pixel_quantizer.code_dim
    m.decode_quantized(torch.zeros(1, g, g, d))  # (1, H, W, d) -> (1, 3, h, w)
    for hook in hooks:
        hook.remove()
    return rows


tables = {"tiny": path_table(model)}
with torch.device("meta"):  # shapes and sizes only: no memory, no arithmetic
    paper = DualToken(model_preset("so400m-384"))
    tables["so400m-384"] = path_table(paper)
for name, rows in tables.items():
    print(f"--- {name}: {sum(r[2] for r in rows):,} parameters from codes to pixels")
    for stage, shape, count in rows:
        print(f"  {stage:20s} {str(shape):24s} {count:>12,}")
assert n_params(paper.pixel_post_proj) == 9_452_288
assert n_params(paper.post_quant_block) == 11_803_904
assert n_params(paper.decoder) == 168_449_667
assert tables["so400m-384"][1][1] == (1, 1024, 24, 24)  # after the 27 -> 24 resize and the post-quant block
assert tables["so400m-384"][-1][1] == (1, 3, 384, 384)

# %% [markdown]
# (A level's shape is after its closing x2 upsample.) Where the paper decoder's parameters sit: `conv_in`, the
# middle and the lowest level (1024 channels at 24 x 24, with attention) hold over three quarters of them, while
# the two 128-channel levels (192 and 384 px) hold under 2 %, yet cost the most compute per parameter: each of
# their weights is applied at up to 384 x 384 positions.

# %%
rows = dict((stage, count) for stage, _, count in tables["so400m-384"])
low = rows["decoder.levels.0"] + rows["decoder.mid"] + rows["decoder.conv_in"]
full = rows["decoder.levels.3"] + rows["decoder.levels.4"]
print(f"lowest level + middle + conv_in: {low / n_params(paper.decoder):.0%}; "
      f"full-resolution levels: {full / n_params(paper.decoder):.1%}")
assert low / n_params(paper.decoder) > 0.75 and full / n_params(paper.decoder) < 0.02
