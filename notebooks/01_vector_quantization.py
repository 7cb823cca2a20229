# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Vector quantization: nearest codes, straight-through gradients, EMA codebooks
#
# **Runtime** (default settings, `pytest --nbval-lax`, 1 Dec 2026): 10 s and 15 s in two runs with 1 torch
# thread on a shared 2-core CPU, at load average 2.6 and 3.9 from other jobs (51 s with
# `DUALTOKEN_LITE_THREADS=2` on the same busy cores, load 3.4). This notebook has one budget: its default
# already runs the full settings (300 EMA steps), so `DUALTOKEN_LITE_FULL=1` changes nothing here.
#
# DualToken turns an image into integers: every feature vector of a vision transformer is replaced by the
# index of its nearest **code** in a learned codebook (docs/method.md §2). This notebook builds that piece by piece on
# 2-D points you can see, then checks each piece against `dualtoken_lite`:
#
# 1. nearest-code lookup, and why it is chunked and computed in fp32;
# 2. the straight-through estimator, which lets gradients cross the (non-differentiable) lookup;
# 3. the commitment loss;
# 4. EMA k-means codebook updates, once per optimizer step;
# 5. codebook collapse, and the dead-code restart that cures it.
#
# Every number quoted in the prose is measured by this run and checked against
# `notebooks/figures/01_vector_quantization.json` (`Figures.check`): if the code changes what it computes, the
# notebook fails instead of the prose going stale.
#
# **Notation, used in every notebook and module:** B batch, H x W token grid, N = H W tokens, C backbone
# width, d code dim, D residual depth, K codebook size, (h, w) image pixels. A codebook is a (K, d) matrix
# whose rows $e_1 \dots e_K$ are the codes.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

from dualtoken_lite.notebook_runtime import Figures, start
from dualtoken_lite.quantizers.codebook import Codebook, nearest_code
from dualtoken_lite.quantizers.vector import VectorQuantizer, commitment_loss, straight_through

FULL = start(0)  # seeds torch, uses cores - 1 threads; the default path already is this notebook's full budget
figures = Figures("01_vector_quantization")  # the numbers the prose quotes, checked below
STEPS = 300  # EMA steps in sections 4-6

def blobs(n: int, generator=None) -> torch.Tensor:
    """n 2-D points from 8 Gaussian blobs on a ring of radius 4: (n, 2)."""
    centre = torch.randint(0, 8, (n,), generator=generator).float() * (2 * math.pi / 8)
    ring = 4 * torch.stack([centre.cos(), centre.sin()], dim=1)
    return ring + 0.5 * torch.randn(n, 2, generator=generator)


x = blobs(2000)  # (N, d) with d = 2
print(x.shape)

# %% [markdown]
# ## 1. Nearest-code lookup
#
# Each vector $z$ is replaced by its nearest code under squared Euclidean distance:
#
# $$k(z) = \arg\min_j \lVert z - e_j \rVert^2 = \arg\min_j \left(\lVert e_j \rVert^2 - 2\, z \cdot e_j\right),$$
#
# since $\lVert z \rVert^2$ is the same for every $j$. The second form is one matrix product, which is how the
# library computes it. First the obvious way, all pairwise differences:

# %%
K = 16
codebook = x[torch.randperm(len(x))[:K]].clone()  # (K, d): K data points as a first codebook

distances = ((x[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)  # (N, K)
codes = distances.argmin(dim=1)  # (N,)
quantized = codebook[codes]  # (N, d)

assert torch.equal(codes, nearest_code(x, codebook))  # the library picks the same codes
print("mean squared quantization error:", float(((x - quantized) ** 2).sum(-1).mean()))

# %%
plt.figure(figsize=(5, 5))
plt.scatter(x[:, 0], x[:, 1], c=codes, cmap="tab20", s=4)
plt.scatter(codebook[:, 0], codebook[:, 1], c="black", marker="x", s=80, label="codes")
plt.title("each point coloured by its nearest code (Voronoi cells)")
plt.legend()
plt.axis("equal")
plt.show()

# %% [markdown]
# ### Why the library chunks the lookup, and computes it in fp32
#
# The distance matrix is N x K. At paper scale a batch of 32 images x 729 positions against K = 16,384 codes
# is 32 x 729 x 16,384 x 4 bytes = 1.5 GB in fp32, for one depth of one branch. `nearest_code` computes it
# `chunk_size` rows at a time (128 by default), so at most a (128, K) block exists at once. Chunking changes
# memory, not answers. Whether it also changes speed depends on the machine (cache size, BLAS, load): the cell
# times both ways in this process and prints the ratio, but nothing here relies on it.

# %%
print(f"paper-scale distance matrix: {32 * 729 * 16384 * 4 / 1e9:.2f} GB")
for chunk_size in (1, 7, 256, 5000):
    assert torch.equal(nearest_code(x, codebook, chunk_size=chunk_size), codes)

g = torch.Generator().manual_seed(2)  # its own generator: the cells below see the same random stream either way
z_many, e_many = torch.randn(8192, 32, generator=g), torch.randn(4096, 32, generator=g)  # 134 MB of distances whole
seconds = {size: [] for size in (128, len(z_many))}
for _ in range(3):  # interleaved, best of three: the machine may be busy
    for size in seconds:
        t0 = time.perf_counter()
        nearest_code(z_many, e_many, chunk_size=size)
        seconds[size].append(time.perf_counter() - t0)
print(f"one product: {min(seconds[8192]) * 1e3:.0f} ms, chunks of 128: {min(seconds[128]) * 1e3:.0f} ms "
      f"(ratio {min(seconds[8192]) / min(seconds[128]):.2f}; a timing, it varies with the machine and its load)")

# %% [markdown]
# The lookup also runs in fp32 when the model trains under bf16 autocast. bf16 keeps 8 significant bits, so
# each input of $z \cdot e_j$ is rounded by up to $2^{-8} \approx 0.4\,\%$, enough to reorder two codes at
# nearly the same distance. The cell
# measures how often: 4,096 random 32-dim vectors against K random codes, nearest code from fp32 distances vs
# from the same formula under bf16 autocast. In this run bf16 picks a different code for 0.8 % of the vectors
# at K = 512 (the tiny preset) and for 2.0 % at K = 16,384 (the paper): random vectors, so how often it
# happens in training depends on how close each vector's runner-up code is. `nearest_code` switches autocast off
# inside, so it returns the fp32 codes either way.

# %%
def bf16_disagreement(K: int, n: int = 4096, d: int = 32) -> float:
    """Share of n random vectors whose nearest of K random codes differs between bf16-autocast and fp32 distances."""
    g = torch.Generator().manual_seed(K)
    z, embed = torch.randn(n, d, generator=g), torch.randn(K, d, generator=g)  # (n, d), (K, d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist = embed.pow(2).sum(-1) - 2 * z @ embed.T  # (n, K); the product runs in bf16 under autocast
        assert torch.equal(nearest_code(z, embed), nearest_code(z.float(), embed.float()))  # library: fp32
    return float((dist.argmin(-1) != nearest_code(z, embed)).float().mean())


bf16_wrong = {K: bf16_disagreement(K) for K in (512, 16384)}
print("bf16 picks a different code for", ", ".join(f"{v:.1%} at K = {K}" for K, v in bf16_wrong.items()))
figures.check("default/bf16_code_disagreement_K512", bf16_wrong[512], tol=0.004)
figures.check("default/bf16_code_disagreement_K16384", bf16_wrong[16384], tol=0.004)
with torch.autocast("cpu", dtype=torch.bfloat16):
    assert torch.equal(nearest_code(x, codebook), codes)

# %% [markdown]
# ## 2. The straight-through estimator
#
# The lookup is piecewise constant: its gradient is zero almost everywhere, so an encoder in front of it
# would learn nothing. VQ-VAE (van den Oord et al. 2017) passes the gradient *straight through*: the forward
# pass outputs $q$, the backward pass treats the quantizer as the identity. With $\operatorname{sg}$ the
# stop-gradient (`.detach()`):
#
# $$\hat z = z + \operatorname{sg}[q - z] \qquad \Rightarrow \qquad \hat z = q, \quad \frac{\partial \hat z}{\partial z} = I.$$
#
# The library writes it as $q + (z - \operatorname{sg}[z])$: same gradient, and the forward value is *exactly*
# $q$ (floating-point $z + (q - z)$ can differ from $q$ in the last bit), so decoding the codes later gives the
# very same tensor.

# %%
z = x[:8].clone().requires_grad_(True)
q = codebook[nearest_code(z.detach(), codebook)]

z_hat = z + (q - z).detach()  # straight-through, the textbook way
upstream = torch.randn_like(z)  # any gradient arriving from the decoder
(z_hat * upstream).sum().backward()
assert torch.equal(z.grad, upstream)  # passed through unchanged
torch.testing.assert_close(z_hat, q)  # close to q ...

assert torch.equal(straight_through(z, q), q)  # ... the library's form is exactly q
a, b = torch.randn(100_000), torch.randn(100_000)  # how often is a + (b - a) not exactly b in fp32?
mismatch = float(((a + (b - a)) != b).float().mean())
print(f"z + (q - z) differs from q in the last bit for {mismatch:.0%} of random fp32 pairs")
assert mismatch > 0.05 and torch.equal(straight_through(a, b), b)

# %% [markdown]
# ## 3. The commitment loss
#
# Nothing in the straight-through trick keeps the encoder's output near its code. The **commitment loss**
# pulls $z$ towards $\operatorname{sg}[q]$ (the code itself does not move from it):
#
# $$\mathcal L_{\text{commit}} = \operatorname{mean}\left((z - \operatorname{sg}[q])^2\right), \qquad
# \frac{\partial \mathcal L_{\text{commit}}}{\partial z} = \frac{2}{\text{numel}}\,(z - q).$$
#
# DualToken weighs it by 5 for each branch (docs/method.md §3); the library returns it unweighted.

# %%
z.grad = None
loss = ((z - q.detach()) ** 2).mean()
loss.backward()
torch.testing.assert_close(z.grad, 2 * (z.detach() - q) / z.numel())
torch.testing.assert_close(commitment_loss(z, q), loss)
print(f"commitment loss {loss.item():.4f}")

# %% [markdown]
# ## 4. EMA k-means codebook updates
#
# The codes get no gradient. Instead each code moves towards the mean of the vectors that chose it, as an
# exponential moving average (VQ-VAE appendix A.1) with decay $\gamma = 0.99$. With $n_k$ the number of
# vectors that chose code $k$ in this step and $s_k$ their sum:
#
# $$N_k \leftarrow \gamma N_k + (1-\gamma)\, n_k, \qquad m_k \leftarrow \gamma m_k + (1-\gamma)\, s_k, \qquad
# e_k = \frac{m_k}{\tilde N_k}, \qquad \tilde N_k = \frac{N_k + \epsilon}{\sum_j N_j + K\epsilon} \sum_j N_j .$$
#
# $\tilde N_k$ is Laplace smoothing ($\epsilon = 10^{-5}$): no division by zero, the total count is kept.
# $n_k$ and $s_k$ come from `bincount` and `index_add`, never an N x K one-hot matrix. In the library a
# forward pass only *accumulates* $n_k, s_k$; `update()` applies them once per optimizer step, so k
# micro-batches update exactly like one k-times-larger batch (docs/method.md §7.2). Below, the inline version and the
# library's `Codebook` run side by side from the same start, 300 steps; the mean squared quantization error of
# the 2,000 points (the sum over the 2 coordinates, as in section 1) falls from 0.817 after the first step to
# 0.343.

# %%
def ema_kmeans_step(embed, size, avg, batch, decay=0.99, eps=1e-5):
    """One EMA k-means step on batch (M, d); returns the new (embed, size, avg)."""
    codes = nearest_code(batch, embed)  # (M,)
    n = torch.bincount(codes, minlength=len(embed)).float()  # (K,) n_k
    s = torch.zeros_like(embed).index_add_(0, codes, batch)  # (K, d) s_k
    size = decay * size + (1 - decay) * n
    avg = decay * avg + (1 - decay) * s
    smoothed = (size + eps) / (size.sum() + len(size) * eps) * size.sum()
    return avg / smoothed[:, None], size, avg


start = x[torch.randperm(len(x))[:K]].clone()  # (K, d) codes started on data points
embed, size, avg = start.clone(), torch.ones(K), start.clone()  # N_k = 1, m_k = e_k: consistent start
library = Codebook(K, 2, dead_code_threshold=0.0)  # restarts off, to compare the EMA step alone
library.embed.copy_(start), library.cluster_size.fill_(1.0), library.embed_avg.copy_(start)
library.initialised.fill_(True)

errors = []
for _ in range(STEPS):
    batch = blobs(256)
    embed, size, avg = ema_kmeans_step(embed, size, avg, batch)
    library.accumulate(batch, library.lookup(batch))  # a forward pass: statistics only
    library.update()  # the once-per-step update
    errors.append(float(((x - embed[nearest_code(x, embed)]) ** 2).sum(-1).mean()))
torch.testing.assert_close(library.embed, embed, rtol=1e-4, atol=1e-4)
print(f"quantization error {errors[0]:.3f} -> {errors[-1]:.3f} after {STEPS} EMA steps")
assert errors[-1] < errors[0]
figures.check("default/ema_error_first_step", errors[0], tol=0.01)
figures.check("default/ema_error_last_step", errors[-1], tol=0.01)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].scatter(x[:, 0], x[:, 1], s=2, c="lightgrey")
axes[0].scatter(start[:, 0], start[:, 1], marker="x", c="red", label="start")
axes[0].scatter(embed[:, 0], embed[:, 1], marker="o", c="black", label=f"after {STEPS} steps")
axes[0].legend(), axes[0].set_title("codes move to the blob means"), axes[0].axis("equal")
axes[1].plot(errors), axes[1].set_xlabel("step"), axes[1].set_ylabel("mean squared error")
axes[1].set_title("quantization error")
plt.show()

# %% [markdown]
# ## 5. Codebook collapse and dead-code restart
#
# EMA k-means only moves a code that some vector chose. A code that nobody picks keeps its place forever
# (its $N_k$ and $m_k$ decay at the same rate, so $e_k = m_k / N_k$ stays put): it is **dead**. Start the
# codebook away from the data and most codes die at once: a handful of codes quantize everything. This is
# *codebook collapse*; it is measured by
#
# - **utilisation**: the share of the K codes used at least once in a batch;
# - **perplexity** $\exp\left(-\sum_k p_k \log p_k\right)$ of the code histogram $p$: the number of codes
#   "effectively" in use, K for a uniform histogram.
#
# The cure DualToken uses (docs/method.md §2): a code whose EMA count $N_k$ drops below 1 is **restarted** at a random
# vector of the current batch. From a start at (12, 12), 300 steps leave 2 of 32 codes in use without
# restarts (utilisation 0.06), and 32 of 32 with them.

# %%
def train_codebook(restart: bool, K=32, steps=STEPS, seed=1):
    """EMA k-means from a bad start (all codes near (12, 12)); returns per-step utilisation and final codes."""
    g = torch.Generator().manual_seed(seed)
    embed = 12 + 0.5 * torch.randn(K, 2, generator=g)  # (K, d), far from the data
    size, avg, used = torch.ones(K), embed.clone(), []
    for _ in range(steps):
        batch = blobs(512, generator=g)
        used.append(float(nearest_code(batch, embed).unique().numel() / K))
        embed, size, avg = ema_kmeans_step(embed, size, avg, batch)
        dead = size < 1.0  # dead-code restart: EMA count below the threshold
        if restart and dead.any():
            fresh = batch[torch.randint(0, len(batch), (int(dead.sum()),), generator=g)]
            embed[dead], size[dead], avg[dead] = fresh, 1.0, fresh
    return used, embed


used_plain, embed_plain = train_codebook(restart=False)
used_restart, embed_restart = train_codebook(restart=True)
print(f"utilisation after {STEPS} steps: without restart {used_plain[-1]:.2f}, with restart {used_restart[-1]:.2f}")
assert used_plain[-1] < 0.3 and used_restart[-1] > 0.8
figures.check("default/codes_used_no_restart", used_plain[-1] * 32, tol=1)  # seeded; 1 code of slack for threads
figures.check("default/codes_used_restart", used_restart[-1] * 32, tol=1)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
axes[0].plot(used_plain, label="no restart"), axes[0].plot(used_restart, label="dead-code restart")
axes[0].set_xlabel("step"), axes[0].set_ylabel("utilisation"), axes[0].legend(), axes[0].set_ylim(0, 1.05)
for ax, e, title in ((axes[1], embed_plain, "no restart"), (axes[2], embed_restart, "restart")):
    ax.scatter(x[:, 0], x[:, 1], s=2, c="lightgrey"), ax.scatter(e[:, 0], e[:, 1], c="black", marker="x")
    ax.set_title(f"codes after {STEPS} steps: {title}"), ax.axis("equal")
plt.show()

# %% [markdown]
# ## 6. The library's `VectorQuantizer`
#
# Everything above, in one module: `forward` looks up codes (chunked, fp32), returns the straight-through
# output, the commitment loss and usage statistics, and in training mode accumulates $n_k, s_k$;
# `update_codebook()` applies them once per step, restarting dead codes. Its EMA counts start at 0, so the
# first update restarts every code from data: the bad start above cannot happen. In eval mode nothing is
# accumulated and nothing moves.

# %%
torch.manual_seed(0)
vq = VectorQuantizer(dim=2, codebook_size=32)
vq.codebook.embed.copy_(12 + 0.5 * torch.randn(32, 2))  # the same bad start
for _ in range(STEPS):
    out = vq(blobs(512).requires_grad_(True))  # forward: statistics accumulate
    vq.update_codebook()  # once per step: EMA update + dead-code restart
print(f"library, bad start: utilisation {float(out.utilisation):.2f}, perplexity {float(out.perplexity):.1f} of 32")
assert float(out.utilisation) > 0.8 and float(out.perplexity) > 16

vq.eval()
before = vq.codebook.embed.clone()
vq(blobs(512))
assert vq.update_codebook()["updated"] == 0 and torch.equal(vq.codebook.embed, before)
figures.save()  # under DUALTOKEN_LITE_WRITE_FIGURES=1: record this run's figures

# %% [markdown]
# Next: **02 · residual quantization** spends D codes per vector, each quantizing what the previous ones
# left over; that is the quantizer both DualToken branches use.
