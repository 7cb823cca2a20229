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
# # 02 · Residual quantization: D codes per vector, on real image patches
#
# **Runtime** (default settings, `pytest --nbval-lax`, 1 Dec 2026): 27 s and 41 s in two runs with 1 torch
# thread on a shared 2-core CPU, at load average 2.6-2.8 and 3.9 from other jobs; with
# `DUALTOKEN_LITE_THREADS=2` on the same busy cores (load 3.4-4.9) it took 4 min 7 s, which is why `start`
# leaves one core free. This notebook has one budget: its default already trains the full 400 steps per
# quantizer, so `DUALTOKEN_LITE_FULL=1` changes nothing here. Every number quoted below is measured by this run
# and checked against `notebooks/figures/02_residual_quantization.json`.
#
# One code per vector is coarse: K = 16,384 codes give 14 bits, far too few to describe a 32-dim feature well.
# DualToken's two branches each use a **residual quantizer** (RQ-VAE, Lee et al. 2022) of depth D = 8 with
# one codebook shared by all depths (docs/method.md §2). Depth d quantizes what depths 1..d-1 left over:
#
# $$r_1 = z, \qquad k_d = \arg\min_j \lVert r_d - e_j \rVert^2, \qquad q_d = e_{k_d}, \qquad
# r_{d+1} = r_d - q_d, \qquad \hat z_d = \sum_{k \le d} q_k .$$
#
# Each vector becomes D integers, $D \log_2 K$ bits (8 x 14 = 112 bits at paper scale). This notebook builds
# the residual loop inline, checks it against `dualtoken_lite.ResidualQuantizer`, and then trains the library's
# quantizer on 8 x 8 RGB patches of public-domain photos that ship with scikit-image, to see
#
# 1. the error fall with depth,
# 2. a shared codebook against one codebook per depth,
# 3. what each depth captures.
#
# Notation (notebook 01): N vectors, d dim, D depth, K codebook size.

# %%
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from dualtoken_lite import ResidualQuantizer
from dualtoken_lite.notebook_runtime import Figures, start
from dualtoken_lite.quantizers.codebook import nearest_code

FULL = start(0)  # seeds torch, uses cores - 1 threads; the default path already is this notebook's full budget
np.random.seed(0)
figures = Figures("02_residual_quantization")  # the numbers the prose quotes, checked below
STEPS = 400  # EMA steps per quantizer
P, K, D = 8, 256, 8  # patch side, codebook size, depth; d = 3 * P * P = 192


def image(name: str) -> torch.Tensor:
    """A scikit-image photo as (3, h, w) floats in [0, 1], cropped to a multiple of P."""
    pixels = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255
    return pixels[:, : pixels.shape[1] // P * P, : pixels.shape[2] // P * P]


def patches(img: torch.Tensor, stride: int = P) -> torch.Tensor:
    """(3, h, w) -> (N, d): all P x P patches at the given stride, flattened."""
    return F.unfold(img[None], kernel_size=P, stride=stride)[0].t()


train = torch.cat([patches(image(n), stride=4) for n in ("astronaut", "coffee", "rocket")])  # (N, d)
held_out = image("chelsea")  # never seen in training
test = patches(held_out)  # (N_test, d) the non-overlapping tiling, to rebuild the image
print(f"train patches {tuple(train.shape)}, held-out patches {tuple(test.shape)} of a {tuple(held_out.shape)} image")

# %% [markdown]
# ## 1. The residual loop, inline
#
# Greedy: each depth takes the nearest code to the current residual (the lookup of notebook 01), and the
# running sum $\hat z_d$ after each depth is kept, because the commitment loss uses all of them (docs/method.md §3).
# The library's forward pass is this loop; with the same codebooks it picks the same codes and returns
# bit-identical partial sums.

# %%
def residual_quantize(z, codebooks):
    """z (N, d), a list of D codebooks (K, d) -> codes (N, D), partial sums (D, N, d)."""
    residual, running = z, torch.zeros_like(z)
    codes, partials = [], []
    for embed in codebooks:
        k = nearest_code(residual, embed)  # (N,)
        running = running + embed[k]  # z_hat_d
        residual = residual - embed[k]  # r_{d+1}
        codes.append(k), partials.append(running)
    return torch.stack(codes, dim=-1), torch.stack(partials)


codebooks = [train[torch.randperm(len(train))[:K]] * 0.5**d for d in range(D)]  # a made-up codebook per depth
codes, partials = residual_quantize(test, codebooks)

rq = ResidualQuantizer(dim=3 * P * P, depth=D, codebook_size=K, shared_codebook=False).eval()
for d in range(D):
    rq.codebook_at(d).embed.copy_(codebooks[d])
out = rq(test)
assert torch.equal(out.codes, codes) and torch.equal(out.partial_sums, partials)
assert torch.equal(rq.decode(out.codes), partials[-1])  # decoding the integers gives the same vectors
print("codes per patch:", tuple(out.codes.shape[1:]), "-> bits per patch:", D * int(np.log2(K)))

# %% [markdown]
# ## 2. Training the library's quantizer
#
# From here on the library does the work: forward passes accumulate EMA statistics, `update_codebook()`
# applies them once per step (notebook 01), with each depth contributing its *own* residual (docs/method.md §7.1).
# Two quantizers, the same budget of K codes per depth:
#
# - **shared**: one codebook of K codes used at every depth (DualToken);
# - **per depth**: D codebooks of K codes (D times the parameters).

# %%
def train_quantizer(shared: bool) -> ResidualQuantizer:
    """STEPS EMA steps on random batches of 1024 training patches."""
    torch.manual_seed(1)
    quantizer = ResidualQuantizer(3 * P * P, D, K, shared_codebook=shared)
    for _ in range(STEPS):
        quantizer(train[torch.randint(0, len(train), (1024,))])
        quantizer.update_codebook()
    return quantizer.eval()


def psnr_per_depth(quantizer: ResidualQuantizer, z: torch.Tensor) -> torch.Tensor:
    """(D,) PSNR in dB of the depth-d reconstruction z_hat_d, pixels in [0, 1]."""
    mse = ((quantizer(z).partial_sums - z) ** 2).mean(dim=(1, 2))
    return -10 * torch.log10(mse)


quantizers = {"shared": train_quantizer(True), "per depth": train_quantizer(False)}
psnr = {name: psnr_per_depth(q, test) for name, q in quantizers.items()}
for name, values in psnr.items():
    print(f"{name:>9}: held-out PSNR by depth", " ".join(f"{v:.1f}" for v in values.tolist()))

# %% [markdown]
# ## 3. Error falls with depth
#
# Each depth can only help if some code is closer to the residual than the zero vector; training makes it so,
# and on the held-out photo the error falls at every depth, for both quantizers. (With the made-up codebooks
# of section 1 there is no such guarantee.) The first depths buy the most: they take the bulk of the patch's
# energy, later depths refine. In this run (400 steps per quantizer) the shared codebook goes from 22.7 dB at
# depth 1 to 30.9 dB at depth 8, the per-depth codebooks from 23.5 to 31.8 dB.

# %%
for name, values in psnr.items():
    assert (values[1:] > values[:-1]).all(), f"{name}: PSNR must rise with depth, got {values}"
gain = psnr["shared"].diff()  # (D - 1,) dB bought by each further depth
assert psnr["shared"][-1] - psnr["shared"][0] > 3 and gain[0] > 2 * gain[-1]  # the first depths buy the most
for name, key in (("shared", "shared"), ("per depth", "per_depth")):  # seeded; tolerance for thread-count noise
    figures.check(f"default/psnr_{key}_depth1", psnr[name][0], tol=0.15)
    figures.check(f"default/psnr_{key}_depth8", psnr[name][-1], tol=0.15)

plt.figure(figsize=(6, 4))
for name, values in psnr.items():
    plt.plot(range(1, D + 1), values, marker="o", label=name)
plt.xlabel("depth d (codes used)"), plt.ylabel("held-out PSNR (dB)"), plt.legend()
plt.title(f"8x8 RGB patches, K = {K}")
plt.show()

# %% [markdown]
# ## 4. Shared against per-depth codebooks
#
# A shared codebook must serve every depth, although depth 1 sees whole patches and depth 8 sees faint
# residuals. It copes by splitting itself: big codes are chosen at the first depth, small ones later.
# Per-depth codebooks specialise outright, with D times the codes, and reach a higher PSNR at depth D; the
# shared one costs D times fewer parameters and one lookup table. The per-depth usage statistics the library
# returns (`out.stats`) show how much of the codebook each depth uses: in this run depth 1 picks from only
# 14 % of the 256 shared codes (the big ones), depths 2-4 from 49-59 %. The histogram puts all depths on one
# logarithmic axis with shared bins: the chosen codes' sizes fall by more than an order of magnitude from depth 1
# to depth 8.

# %%
shared = quantizers["shared"]
out = shared(test)
norms = shared.codebooks[0].embed.norm(dim=1)  # (K,) size of every code
chosen_norm = norms[out.codes].mean(dim=0)  # (D,) mean size of the codes chosen at each depth
print("mean norm of the chosen code, by depth:", " ".join(f"{v:.2f}" for v in chosen_norm.tolist()))
print("shared utilisation by depth:", " ".join(f"{v:.2f}" for v in out.stats.utilisation.tolist()))
assert chosen_norm[0] > 3 * chosen_norm[-1]  # depth 1 uses big codes, the last depth small ones
assert out.stats.utilisation[0] < 0.5 * out.stats.utilisation[1]  # depth 1 draws on few (big) codes
assert psnr["per depth"][-1] > psnr["shared"][-1]  # D times the codes: higher PSNR at depth D
assert chosen_norm[0] > 10 * chosen_norm[-1]  # "more than an order of magnitude"
figures.check("default/shared_utilisation_depth1", out.stats.utilisation[0], tol=0.03)
figures.check("default/shared_utilisation_depth2_4_min", out.stats.utilisation[1:4].min(), tol=0.05)
figures.check("default/shared_utilisation_depth2_4_max", out.stats.utilisation[1:4].max(), tol=0.05)

chosen = norms[out.codes]  # (N_test, D) size of the code each patch chose at each depth
bins = torch.logspace(float(chosen.min().log10()), float(chosen.max().log10()), 60)  # one set of bins for all
plt.figure(figsize=(7, 3.5))
for d in (1, 2, 4, 8):  # the depths the rebuilt photo below shows
    plt.hist(chosen[:, d - 1].numpy(), bins=bins.numpy(), histtype="step", lw=1.5, label=f"depth {d}")
plt.xscale("log"), plt.xlabel("norm of the chosen code (log scale)"), plt.ylabel("patches")
plt.legend(fontsize=8), plt.title("one shared codebook, split by depth (shared bins)")
plt.show()

# %% [markdown]
# ## 5. What each depth captures
#
# Rebuilding the held-out photo from the first d codes of every patch shows the division of labour: depth 1
# paints each 8 x 8 patch one **flat colour**, a mosaic; shading, edges and texture all come from the later
# depths. The number behind "flat": the share of the energy of a depth's contribution $q_d$ that lies in its
# flat-colour part (the patch mean of each channel). In this run it is 99.6 % at depth 1: the depth-1 codes
# the photo uses are flat to within 0.4 % of their energy. It falls to 60 % at depth 2 and 21 % at depth 8.

# %%
def rebuild(flat: torch.Tensor) -> torch.Tensor:
    """(N_test, d) patches -> (h, w, 3) image, clipped to [0, 1]."""
    img = F.fold(flat.t()[None], output_size=held_out.shape[1:], kernel_size=P, stride=P)[0]
    return img.clamp(0, 1).permute(1, 2, 0)


fig, axes = plt.subplots(1, 5, figsize=(18, 3.5))
for ax, d in zip(axes, (1, 2, 4, 8)):
    ax.imshow(rebuild(out.partial_sums[d - 1])), ax.set_title(f"depth {d}: {psnr['shared'][d - 1]:.1f} dB")
axes[4].imshow(held_out.permute(1, 2, 0)), axes[4].set_title("original")
for ax in axes:
    ax.axis("off")
plt.show()

# %%
q = torch.diff(out.partial_sums, dim=0, prepend=torch.zeros_like(out.partial_sums[:1]))  # (D, N, d) each q_d
per_channel = q.reshape(D, -1, 3, P * P)  # (D, N, 3, P*P)
flat_colour = per_channel.mean(-1, keepdim=True).expand_as(per_channel)  # the patch-mean part of q_d
share = (flat_colour**2).sum(dim=(1, 2, 3)) / (per_channel**2).sum(dim=(1, 2, 3))  # (D,)
print("share of q_d that is flat colour, by depth:", " ".join(f"{v:.2f}" for v in share.tolist()))
assert share[0] > 0.99 and share[0] > share[-1] + 0.2  # depth 1: flat colour, nearly all of it
for d in (1, 2, D):
    figures.check(f"default/flat_colour_share_depth{d}", share[d - 1], tol=0.02)
figures.save()  # under DUALTOKEN_LITE_WRITE_FIGURES=1: record this run's figures

# %% [markdown]
# In DualToken the vectors are not pixels but 32-dim projections of SigLIP features, and the quantizer runs
# once for the pixel branch (shallow layers) and once for the semantic branch (deep layers); the mechanics are
# the ones above. Next notebooks use `ResidualQuantizer` as a part of the model.
