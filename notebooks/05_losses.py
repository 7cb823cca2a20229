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
# # 05 · The losses, one term at a time
#
# DualToken trains its tokenizer with one objective made of five terms (docs/method.md §3), with $x, \hat x \in [-1, 1]$
# and $T$ the frozen teacher:
#
# $$
# \mathcal L = \underbrace{5\,\mathrm{MSE}(\hat x, x) + 1\,\mathrm{LPIPS}(\hat x, x)}_{\text{reconstruction}}
# + \underbrace{5\,c_{\text{pix}} + 5\,c_{\text{sem}}}_{\text{commitment}}
# + \underbrace{s\,\big(5\,[\mathrm{MSE}(h, T.h) - \cos(h, T.h)] + [\mathrm{MSE}(p, T.p) - \cos(p, T.p)]\big)}
#   _{\text{semantic}}
# + \underbrace{0.75\, g_w\,(-\overline{D(\hat x)})}_{\text{adversarial}}
# $$
#
# This notebook switches the terms on and off, one at a time, in short runs of the library's trainer
# (`dualtoken_lite.train.run`, the same code as `python -m dualtoken_lite.train`) on the tiny world, and looks at
# what each one does: the pixel loss alone, LPIPS (and why it refuses to run here), the GAN and its adaptive
# weight, the semantic distillation and what it preserves, and the commitment. The loss functions themselves are
# `dualtoken_lite.losses` (pure functions, tested in `tests/test_losses.py`); here we watch them train.
#
# Budget: under test (`DUALTOKEN_LITE_QUICK=1`) each run is a few dozen steps at batch 8, so curves are short and
# only robust facts are asserted. The figures quoted in the prose come from the full budget of this notebook
# (four runs of 240 steps at batch 16), measured with
# `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/jupytext --execute notebooks/05_losses.py` on a shared 2-core CPU.

# %%
import json
import random
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from dualtoken_lite.datasets.images import make_grid_image
from dualtoken_lite.losses.perceptual import LABEL_RANDOM, Perceptual, PerceptualWeightsMissing
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import quick_mode
from dualtoken_lite.tinyworld.generator import make_batch, to_tensor
from dualtoken_lite.tinyworld.shards import write_split_shard
from dualtoken_lite.tinyworld.teacher import load_teacher
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.logs import read_metrics
from dualtoken_lite.training.loop import run

random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
QUICK = quick_mode()  # DUALTOKEN_LITE_QUICK=1 shrinks every run below (used under test)
STEPS, BATCH, TRAIN_IMAGES, EVAL_IMAGES = (24, 8, 256, 64) if QUICK else (240, 16, 4096, 512)
GAN_START = STEPS // 3  # the discriminator switches on here (the release starts it partway, docs/method.md §3)
TEACHER = "shipped"  # the tiny world's trained teacher (data/teacher), also the tower's starting point
WORK = Path(tempfile.mkdtemp(prefix="dtl05_"))
print(f"quick={QUICK}: {STEPS} steps x batch {BATCH} per run, GAN from step {GAN_START}; runs under {WORK}")

# %% [markdown]
# The data: tiny-world training images and held-out images, written as plain WebDataset shards (the loader reads
# `png` + `cls` entries, docs/method.md §5).

# %%
TRAIN = write_split_shard(WORK / "train", "train", TRAIN_IMAGES)
EVAL = write_split_shard(WORK / "eval", "eval", EVAL_IMAGES)
x_eval = to_tensor(make_batch(0, EVAL_IMAGES, "eval")[0])  # (B, 3, 64, 64) in [-1, 1], the same held-out images
labels_eval = torch.as_tensor(make_batch(0, EVAL_IMAGES, "eval")[1])
assert x_eval.shape == (EVAL_IMAGES, 3, 64, 64) and -1 <= x_eval.min() and x_eval.max() <= 1

# %% [markdown]
# One helper runs the library's trainer with a shared budget plus the flags of the experiment, and hands back
# the run's summary (held-out PSNR, SSIM, codebook use, semantic accuracy), its metric lines and its model.

# %%
COMMON = ["--train-data", TRAIN, "--eval-data", EVAL, "--teacher", TEACHER, "--max_steps", str(STEPS),
          "--batch_size", str(BATCH), "--warmup_steps", str(max(1, STEPS // 10)), "--log_every", "2",
          "--image_every", "0", "--eval_every", "0", "--save_every", "0", "--eval_samples", str(EVAL_IMAGES)]


def train(name: str, *flags: str) -> dict:
    """Train one run of the tiny preset; return its summary, metric lines and final model (eval mode)."""
    out = WORK / name
    summary = run(parse_args([*COMMON, "--out", str(out), *flags]))
    model = DualToken.from_pretrained(out / "model").eval()
    return {"summary": summary, "eval": summary["eval"], "metrics": read_metrics(out), "model": model}


def curve(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, skipping the lines that do not have it."""
    pairs = [(m["step"], m[key]) for m in metrics if key in m]
    return [p[0] for p in pairs], [p[1] for p in pairs]


runs = {"mse": train("mse")}  # the tiny preset's loss: 5 MSE + commitment + semantic; no LPIPS, no GAN
print({k: runs["mse"]["summary"]["loss_terms"][k] for k in ("recon", "perceptual", "semantic", "gan")})

# %% [markdown]
# ## 1. Reconstruction: the pixel loss
#
# $\mathcal L_{\text{rec}} = 5\,\mathrm{MSE}(\hat x, x)$ on images in $[-1, 1]$. PSNR is its readable
# twin: on $[0, 1]$ images, $\mathrm{PSNR} = 10 \log_{10}(1 / \mathrm{MSE}_{[0,1]})$, and since the $[-1, 1]$ MSE
# is 4 times the $[0, 1]$ one, $\mathrm{PSNR} = 10\log_{10}(4 / \mathrm{MSE}_{[-1,1]})$ for a single image.
# With the full budget the held-out PSNR of this run reached 18.40 dB (SSIM 0.695).

# %%
steps, rec = curve(runs["mse"]["metrics"], "loss/recon")
_, psnr_curve = curve(runs["mse"]["metrics"], "psnr")
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].semilogy(steps, rec)
ax[0].set(title="MSE on [-1, 1] (training batches)", xlabel="step")
ax[1].plot(steps, psnr_curve, label="training batch")
ax[1].plot(steps, [10 * np.log10(4 / r) for r in rec], "--", label="10 log10(4 / MSE)")
ax[1].set(title="PSNR (dB)", xlabel="step")
ax[1].legend()
plt.show()
print(f"held-out after {STEPS} steps: PSNR {runs['mse']['eval']['psnr']:.2f} dB, SSIM {runs['mse']['eval']['ssim']:.3f}")
assert np.mean(rec[-3:]) < 0.75 * np.mean(rec[:2]), "the pixel loss falls by at least a quarter"
assert np.mean(psnr_curve[-3:]) > np.mean(psnr_curve[:2]) + 1.0

# %% [markdown]
# ## 2. LPIPS: refused without VGG16's ImageNet weights
#
# The paper adds $1 \times \mathrm{LPIPS}$ (Zhang et al. 2018): distances between unit-normalised VGG16
# features of $x$ and $\hat x$ at five depths, weighted per channel by learned 1x1 layers. The linear layers ship
# with the `lpips` package; the VGG16 trunk needs torchvision's ImageNet weights, which cannot be downloaded on
# this machine. So `Perceptual()` refuses, and says what to do:

# %%
try:
    Perceptual()
    refused = None
except PerceptualWeightsMissing as err:
    refused = str(err)
print(refused)
assert refused is not None and "vgg16-397923af.pth" in refused and "allow_random_lpips" in refused

# %% [markdown]
# One can opt in to a **randomly initialised VGG16** (`allow_random_backbone=True`, or
# `--loss.allow_random_lpips true` for the trainer). That is *not* LPIPS: random features still tell images
# apart, but their distances mean nothing perceptual, which is why every log carries the label
# `lpips-vgg(random backbone)`. We only show that it is a distance (0 between an image and itself, growing with
# noise); we do not train with it, and the tiny preset leaves the term off (`perceptual_weight = 0`).

# %%
lpips_random = Perceptual(allow_random_backbone=True)
x4 = x_eval[:4]
noise = [lpips_random(x4 + s * torch.randn_like(x4), x4).item() for s in (0.0, 0.1, 0.3)]
print(f"{lpips_random.label}: distance at noise 0, 0.1, 0.3 = {[round(v, 4) for v in noise]}")
assert lpips_random.label == LABEL_RANDOM
assert noise[0] < 1e-6 < noise[1] < noise[2]

# %% [markdown]
# ## 3. The adversarial term and its adaptive weight
#
# From step `GAN_START` on, a patch discriminator $D$ (docs/method.md §3) learns to tell $x$ from $\hat x$ with a leaky
# hinge loss, and the tokenizer gets $0.75\,g_w\,(-\overline{D(\hat x)})$. The weight $g_w$ is VQGAN's balance,
# taken at the decoder's last convolution weight $W$:
#
# $$ g_w = \mathrm{clamp}\Big(\frac{\lVert \nabla_W \mathcal L_{\text{nll}} \rVert}
#           {\lVert \nabla_W \mathcal L_G \rVert + 10^{-4}},\ 0.3,\ 10\Big),
#    \qquad \mathcal L_{\text{nll}} = \mathrm{MSE} (+\,\mathrm{LPIPS}), $$
#
# so the adversarial gradient at the output never swamps (or vanishes beside) the reconstruction gradient. The
# trainer logs it every few steps as `loss/gan_adaptive_weight`.

# %%
runs["gan"] = train("gan", "--gan_start_step", str(GAN_START))
metrics = runs["gan"]["metrics"]
steps_w, g_w = curve(metrics, "loss/gan_adaptive_weight")
steps_d, d_real = curve(metrics, "disc/logits_real")
_, d_fake = curve(metrics, "disc/logits_fake")
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot(steps_w, g_w, ".-")
ax[0].axhline(0.3, ls=":", c="grey")
ax[0].axhline(10, ls=":", c="grey")
ax[0].set(title="adaptive weight g_w", xlabel="step", yscale="log")
ax[1].plot(steps_d, d_real, label="D(x)")
ax[1].plot(steps_d, d_fake, label="D(x_hat)")
ax[1].set(title="discriminator logits (mean)", xlabel="step")
ax[1].legend()
plt.show()
off = [m for m in metrics if m["step"] <= GAN_START]
assert off and all(m["loss/gan_weight"] == 0 and "loss/gan_adaptive_weight" not in m for m in off)
assert steps_w and min(steps_w) > GAN_START, "g_w appears only once the GAN is on"
assert all(0.3 - 1e-6 <= w <= 10 + 1e-6 for w in g_w), "g_w stays inside its clamp"

# %% [markdown]
# What the GAN does at this scale (full budget, held-out): PSNR 16.77 dB and SSIM 0.552 with it,
# against 18.40 dB and 0.695 without. The critic rewards what MSE averages away (colour and edge contrast;
# compare the rows in section 6, where the GAN row also shows halo artefacts) and the run pays for it in pixel
# fidelity at this short budget; the paper switches the GAN on late, after reconstruction has converged.
# At full budget $g_w$ spent 88 % of its logged steps at the 0.3 floor of its clamp: there the adversarial
# gradient at the decoder's last layer is more than three times the MSE one, and the floor sets the weight.

# %%
for name in ("mse", "gan"):
    e = runs[name]["eval"]
    print(f"{name:4s}: PSNR {e['psnr']:.2f} dB, SSIM {e['ssim']:.3f}")
floor = 100 * np.mean([w <= 0.3 + 1e-6 for w in g_w])
print(f"g_w at its floor 0.3 on {floor:.0f} % of the logged steps")
if not QUICK:  # the full-budget claims above
    assert runs["gan"]["eval"]["psnr"] < runs["mse"]["eval"]["psnr"] and floor > 50

# %% [markdown]
# ## 4. The semantic loss and what it preserves
#
# The semantic branch quantizes block 5 (the paper's block 26), re-enters the tower with the quantized features,
# and runs the last block and the MAP head to a pooled embedding $p$. The loss keeps both close to the frozen
# teacher's: $5\,[\mathrm{MSE}(h, T.h) - \cos(h, T.h)] + [\mathrm{MSE}(p, T.p) - \cos(p, T.p)]$, times
# $s$ = `sem_weight`. What it preserves is measured twice on held-out images: the cosine between the
# tokenizer's pooled embedding (computed from its **codes**) and the teacher's, and the accuracy of the
# teacher's class head on it (the tiny world's stand-in for zero-shot accuracy, docs/method.md §6). The control run sets
# `--loss.sem_weight 0`: same model, same steps, no distillation.

# %%
runs["no_sem"] = train("no_sem", "--loss.sem_weight", "0")
teacher_trunk, teacher_head = load_teacher(None if TEACHER == "shipped" else TEACHER)
with torch.no_grad():
    t_pool = teacher_trunk(x_eval)  # (B, E)
    cos = {n: torch.cosine_similarity(runs[n]["model"].embed(x_eval), t_pool, dim=-1).mean().item()
           for n in ("mse", "no_sem")}
acc = {n: runs[n]["eval"]["semantic_accuracy"] for n in ("mse", "no_sem")}
teacher_acc = runs["mse"]["eval"]["teacher_accuracy"]
for n in ("mse", "no_sem"):
    print(f"{n:6s}: cos(pooled, teacher) = {cos[n]:.3f}, teacher-head accuracy {100 * acc[n]:.1f} %")
print(f"teacher itself: {100 * teacher_acc:.1f} % (chance {100 / teacher_head.out_features:.1f} %)")
assert cos["mse"] > cos["no_sem"] + 0.2, "distillation keeps the pooled embedding on the teacher's"
assert acc["mse"] > acc["no_sem"] + 0.1, "and with it the class information"
if not QUICK:  # the full-budget claims below
    assert acc["no_sem"] < 0.2 and teacher_acc - acc["mse"] < 0.05

# %% [markdown]
# Full budget: with the semantic term the pooled embedding keeps cosine 0.989 with the teacher's and a
# teacher-head accuracy of 95.7 % (teacher: 97.5 %); without it, cosine -0.011 and
# 10.0 %, chance level: the semantic codes then carry whatever the untrained semantic projections make
# of block 5, and nothing asks them to stay meaningful. Reconstruction changes by less than a decibel (PSNR
# 19.17 without the term vs 18.40 dB with it, one seed): the semantic gradient also reaches blocks 1-2,
# which the pixel branch reads, so even split branches pull a little on the shared early blocks; but the two
# codebooks read different layers, and that keeps the fight small, which is DualToken's point (docs/method.md §1; the
# ablation, `python -m dualtoken_lite.ablation`, measures what sharing one layer costs).

# %%
for n in ("mse", "no_sem"):
    print(f"{n:6s}: PSNR {runs[n]['eval']['psnr']:.2f} dB")
assert abs(runs["no_sem"]["eval"]["psnr"] - runs["mse"]["eval"]["psnr"]) < 1.0

# %% [markdown]
# ## 5. The commitment term
#
# The quantizer's output is $q = \sum_{k \le D} e_{k}$, and its codebooks move by EMA k-means, not by gradient.
# What keeps the encoder's output $z$ near the codes is the commitment
# $c = \frac1D \sum_{d=1}^{D} \lVert z - \mathrm{sg}[\sum_{k \le d} q_k] \rVert^2$ (weight 5 per branch). Without
# it (`--loss.commit_pixel_weight 0 --loss.commit_semantic_weight 0`) nothing stops $z$ from drifting away from
# the codes: the straight-through estimator still passes gradients, the decoder is trained on $q$, and the
# encoder is free to move $z$ wherever the EMA codebook has to chase it. We measure $c$ of the pixel branch on
# held-out images for both runs.

# %%
runs["no_commit"] = train("no_commit", "--loss.commit_pixel_weight", "0", "--loss.commit_semantic_weight", "0")
with torch.no_grad():
    commit = {n: runs[n]["model"](x_eval).pixel.commitment.item() for n in ("mse", "no_commit")}
steps_c, c_curve = curve(runs["mse"]["metrics"], "loss/commit_pixel")
plt.figure(figsize=(4.5, 3))
plt.semilogy(steps_c, c_curve)
plt.title("pixel commitment during training (mse run)")
plt.xlabel("step")
plt.show()
for n in ("mse", "no_commit"):
    print(f"{n:9s}: held-out pixel commitment {commit[n]:.4f}, PSNR {runs[n]['eval']['psnr']:.2f} dB")
assert "loss/commit_pixel" not in runs["no_commit"]["metrics"][-1], "weight 0: the term is off, not logged"
if not QUICK:  # a few dozen steps are too few for z to drift measurably
    assert commit["no_commit"] > 1.5 * commit["mse"], "without the term, z drifts away from its codes"

# %% [markdown]
# Full budget: held-out pixel commitment 0.0028 with the term and 0.0248 without, 9 times
# larger, while PSNR is 18.40 vs 18.90 dB. The decoder only ever sees $q$, so a short run's
# reconstruction need not suffer; what the term protects is the tokens themselves: with it, the codes describe
# the encoder's features closely, which is what a language model reading them (and the semantic branch, whose
# pooled embedding is computed from its codes) relies on.

# %% [markdown]
# ## 6. Reconstructions side by side
#
# Eight held-out images (top row) and what each run's tokenizer makes of them, one row per run.

# %%
names = ["mse", "gan", "no_sem", "no_commit"]
with torch.no_grad():
    rows = [x_eval[:8]] + [runs[n]["model"](x_eval[:8]).reconstruction.clamp(-1, 1) for n in names]
grid = make_grid_image(torch.cat(rows), nrow=8)
plt.figure(figsize=(8, 5.4))
plt.imshow(grid)
plt.yticks([(i + 0.5) * grid.height / len(rows) for i in range(len(rows))], ["original", *names])
plt.xticks([])
plt.title(f"held-out reconstructions after {STEPS} steps")
plt.show()
assert grid.width >= 8 * 64 and grid.height >= len(rows) * 64

# %% [markdown]
# ## Summary
#
# | run | flags | PSNR (dB) | SSIM | semantic acc. (%) |
# |---|---|---|---|---|
# | mse | `(tiny preset)` | 18.40 | 0.695 | 95.7 |
# | gan | `--gan_start_step 80` | 16.77 | 0.552 | 96.1 |
# | no_sem | `--loss.sem_weight 0` | 19.17 | 0.707 | 10.0 |
# | no_commit | `--loss.commit_pixel_weight 0 --loss.commit_semantic_weight 0` | 18.90 | 0.694 | 95.7 |
#
# Full budget: 240 steps at batch 16 per run on 4,096 training images, held-out figures on 512 images, measured
# with the command at the top on a shared 2-core CPU (13 minutes for the whole notebook).

# %%
flags = {"mse": "(tiny preset)", "gan": f"--gan_start_step {GAN_START}", "no_sem": "--loss.sem_weight 0",
         "no_commit": "--loss.commit_pixel_weight 0 --loss.commit_semantic_weight 0"}
for n in names:
    e = runs[n]["eval"]
    print(f"# | {n} | `{flags[n]}` | {e['psnr']:.2f} | {e['ssim']:.3f} | {100 * e['semantic_accuracy']:.1f} |")

# %% [markdown]
# The figures this notebook quotes, in one place (the prose above holds the full-budget values of these).

# %%
figures = {"steps": STEPS, "batch": BATCH, "g_w_floor_percent": round(floor),
           "cos": {n: round(v, 3) for n, v in cos.items()}, "commitment": {n: round(v, 4) for n, v in commit.items()},
           **{n: {k: round(runs[n]["eval"][k], 4) for k in ("psnr", "ssim", "semantic_accuracy", "teacher_accuracy")}
              for n in names}}
print(json.dumps(figures))
