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
# # 06 · End to end: train tiny DualToken, then look inside its codes
#
# Notebooks 01-05 built the pieces: vector and residual quantization, the tapped encoder, the decoder, the
# losses. Here the library's trainer puts them together: it trains the tiny DualToken from the tiny world's
# teacher (whose tower is also the tokenizer's starting point), exactly like the README's main job
#
#     python -m dualtoken_lite.train --preset tiny        # 1200 steps x batch 32 (`make demo`)
#
# and we then open the result: reconstructions, how much of each codebook is used at each residual depth, what
# each depth adds to the picture, and an explorer that swaps one code and shows what changes.
#
# What the main job gave (`make demo` on the project's 2-core CPU, 7 min 56 s with the training shards written;
# README.md): on 512 held-out images PSNR 30.89 dB (luma 32.52, chroma 38.02), SSIM 0.913, teacher-head accuracy
# of the pooled embedding from the semantic codes 97.1 % against the teacher's own 97.5 % on the same images;
# pixel codebook utilisation per depth 0.21, 0.77, 0.76, 0.55, 0.45, 0.38, 0.33, 0.29 (K = 512). Its model ships
# as `data/tokenizer/`. (The first build of the tiny recipe came back grey at 21.0 dB; docs/tiny_recipe.md tells
# why and what changed.)
#
# Budget: under test (`DUALTOKEN_LITE_QUICK=1`) the run is a few dozen steps at batch 8 on a small shard, so the
# pictures are blurry and only facts that hold at any stage of training are asserted. Without the switch this
# notebook runs the main job's settings (the trainer's defaults for `--preset tiny`).

# %%
import random
import tempfile
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import clear_output, display

from dualtoken_lite.datasets.images import make_grid_image
from dualtoken_lite.evaluation.metrics import CodeUsage, psnr
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import quick_mode
from dualtoken_lite.tinyworld.generator import CLASSES, make_batch, to_tensor
from dualtoken_lite.tinyworld.shards import write_split_shard
from dualtoken_lite.tinyworld.teacher import load_teacher
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.logs import read_metrics
from dualtoken_lite.training.loop import run

random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
QUICK = quick_mode()  # DUALTOKEN_LITE_QUICK=1 shrinks the run below (used under test)
TEACHER = "shipped"  # the tiny world's trained teacher (data/teacher), also the tower's starting point
WORK = Path(tempfile.mkdtemp(prefix="dtl06_"))
EVAL_IMAGES = 64 if QUICK else 512


EVAL = write_split_shard(WORK / "eval", "eval", EVAL_IMAGES)
if QUICK:  # a small shard, a short run
    budget = ["--train-data", write_split_shard(WORK / "train", "train", 256), "--max_steps", "30",
              "--batch_size", "8", "--warmup_steps", "3", "--log_every", "2"]
else:  # the main job: the trainer's defaults for --preset tiny (the tiny world's 32k training images)
    budget = []
args = ["--preset", "tiny", "--teacher", TEACHER, *budget, "--eval-data", EVAL, "--eval_samples", str(EVAL_IMAGES), "--image_every", "0",
        "--eval_every", "0", "--save_every", "0", "--out", str(WORK / "run")]
print("python -m dualtoken_lite.train " + " ".join(args))

# %% [markdown]
# ## 1. Train
#
# One call: the trainer validates the config, loads the teacher into the tower and keeps a frozen copy for the
# semantic loss, and trains with 5 MSE + commitment + semantic distillation (notebook 05). Its summary holds the
# held-out evaluation: PSNR and SSIM (RGB in [0, 1], data range 1), codebook use, and the **semantic accuracy**:
# the teacher's class head applied to the pooled embedding computed from the *quantized* semantic path, beside
# the teacher's own accuracy on the same images (the tiny world's stand-in for zero-shot, docs/method.md §6).

# %%
summary = run(parse_args(args))
result = summary["eval"]
metrics = read_metrics(WORK / "run")
steps = [m["step"] for m in metrics if "psnr" in m]
plt.figure(figsize=(4.5, 3))
plt.plot(steps, [m["psnr"] for m in metrics if "psnr" in m])
plt.title("PSNR of training batches (dB)")
plt.xlabel("step")
plt.show()
print(f"held-out: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f}, semantic accuracy "
      f"{100 * result['semantic_accuracy']:.1f} % (teacher {100 * result['teacher_accuracy']:.1f} %)")
assert summary["step"] == parse_args(args).max_steps and result["images"] == EVAL_IMAGES
assert 0 <= result["semantic_accuracy"] <= 1 and result["teacher_accuracy"] > 1 / len(CLASSES)

# %% [markdown]
# ## 2. Reconstructions through the codes API
#
# `encode` turns images into two grids of integers, `(B, H, W, D)` pixel codes and `(B, H, W, D)` semantic
# codes; `decode` turns the pixel codes back into an image. For the tiny model H = W = 8 and D = 4. Going through
# the integers gives exactly the forward pass's reconstruction.

# %%
model = DualToken.from_pretrained(WORK / "run" / "model").eval()
D = model.cfg.pixel_quantizer.depth  # residual depth (8 for tiny's pixel codes, as in the paper)
images, labels = make_batch(0, EVAL_IMAGES, "eval")
x = to_tensor(images)  # (B, 3, 64, 64) in [-1, 1], the evaluation's images, in the same order
with torch.no_grad():
    pixel_codes, semantic_codes = model.encode(x)  # (B, 8, 8, 8) pixel, (B, 8, 8, 4) semantic
    x_hat = model.decode(pixel_codes)  # (B, 3, 64, 64)
    out = model(x)
print("pixel codes", tuple(pixel_codes.shape), "semantic codes", tuple(semantic_codes.shape))
torch.testing.assert_close(x_hat, out.reconstruction, rtol=1e-4, atol=1e-4)
assert abs(psnr(x_hat, x).mean().item() - result["psnr"]) < 1e-3, "the summary's PSNR is these images'"
grid = make_grid_image(torch.cat([x[:8], x_hat[:8].clamp(-1, 1)]), nrow=8)
plt.figure(figsize=(8, 2.2))
plt.imshow(grid)
plt.axis("off")
plt.title("held-out images (top) and their reconstructions from the pixel codes (bottom)")
plt.show()

# %% [markdown]
# ## 3. Codebook utilisation per depth
#
# Each branch has one codebook of K codes shared by its D depths (docs/method.md §2). Utilisation at depth d is the
# fraction of the K codes that occur at depth d over the held-out set; perplexity $\exp(H)$ of the code
# histogram says how evenly they are used (K when uniform, 1 when one code takes everything). We count the
# codes inline, check the count against the library's `CodeUsage` and the trainer's summary, and plot both
# branches.

# %%
def utilisation(codes: torch.Tensor, K: int) -> torch.Tensor:
    """(D,) fraction of the K codes used at each depth; codes (..., D)."""
    flat = codes.reshape(-1, codes.shape[-1])  # (M, D)
    return torch.stack([torch.bincount(flat[:, d], minlength=K).gt(0).double().mean() for d in range(flat.shape[1])])


fig, ax = plt.subplots(1, 2, figsize=(9, 3))
for branch, codes, q in (("pixel", pixel_codes, model.pixel_quantizer),
                         ("semantic", semantic_codes, model.semantic_quantizer)):
    used = utilisation(codes, q.codebook_size)
    usage = CodeUsage(q.codebook_size, q.depth)
    usage.update(codes)
    torch.testing.assert_close(used, usage.utilisation())
    assert [round(v, 4) for v in used.tolist()] == result["codebook"][branch]["utilisation"]
    ax[0].plot(range(1, q.depth + 1), used.numpy(), "o-", label=branch)
    ax[1].plot(range(1, q.depth + 1), usage.perplexity().numpy(), "o-", label=branch)
    union = codes.reshape(-1).unique().numel() / q.codebook_size
    print(f"{branch:8s}: utilisation per depth {[f'{v:.2f}' for v in used.tolist()]}, any depth {union:.2f}")
ax[0].set(title="utilisation (fraction of K)", xlabel="depth d", ylim=(0, 1.05), xticks=range(1, D + 1))
ax[1].set(title="perplexity", xlabel="depth d", yscale="log", xticks=range(1, D + 1))
ax[0].legend()
plt.show()

# %% [markdown]
# ## 4. What each residual depth adds
#
# A residual quantizer describes a vector coarse to fine: $q^{(d)} = \sum_{k \le d} e_{c_k}$, and each depth
# quantizes what the previous ones left over. Dropping the later depths of the codes gives the partial sum
# $q^{(d)}$, and decoding it shows what the first d depths know. Built inline (one gather and a sum over the first
# d code vectors), it equals the partial sums the quantizer itself returns (`RVQOutput.partial_sums`, shape
# (D, B, H, W, d)); the library's `decode_quantized` then turns each into an image.
#
# What must hold at any stage of training: the quantization error $\lVert z - q^{(d)} \rVert^2$ falls with every
# depth. What training adds: the decoder, trained on the full $q^{(D)}$, turns the extra detail into PSNR.

# %%
embed = model.pixel_quantizer.codebooks[0].embed  # (K, d), shared by all depths
partial = [embed[pixel_codes[..., :d]].sum(dim=-2) for d in range(1, D + 1)]  # D x (B, H, W, d)
for d in range(D):
    torch.testing.assert_close(partial[d], out.pixel.partial_sums[d], rtol=1e-5, atol=1e-5)
cfg = model.cfg
with torch.no_grad():  # z, the pixel branch's input to the quantizer (model.forward_encoder, unrolled)
    hidden = [model.encoder.embed(x)]  # hidden[k]: (B, N, C) after block k (0 = the patch embedding)
    for k in range(1, cfg.pixel_layer + 1):
        hidden.append(model.encoder.run_blocks(hidden[-1], k, k))
    z = model.pixel_proj(hidden[cfg.pixel_layer])  # (B, N, d); the tiny preset taps the patch embedding
    if cfg.shortcut_layer is not None:  # the paper's 0.6 x projection of an earlier block
        z = z + cfg.shortcut_weight * model.shortcut_proj(hidden[cfg.shortcut_layer])
    z = model.to_grid(z)  # (B, H, W, d)
    by_depth = [model.decode_quantized(p) for p in partial]  # D x (B, 3, 64, 64)
error = [(z - p).pow(2).mean().item() for p in partial]
gain = [psnr(r, x).mean().item() for r in by_depth]
for d in range(D):
    print(f"first {d + 1} depth(s): quantization error {error[d]:.4f}, PSNR {gain[d]:.2f} dB")
assert abs(np.mean(error) - out.pixel.commitment.item()) < 1e-5, "their mean is the commitment (notebook 05)"
assert all(a > b for a, b in zip(error, error[1:])), "each depth shrinks the residual"
assert abs(gain[-1] - result["psnr"]) < 1e-3, "all D depths = the model's own reconstruction"
rows = make_grid_image(torch.cat([x[:6]] + [r[:6].clamp(-1, 1) for r in by_depth]), nrow=6)
plt.figure(figsize=(5, 4.6))
plt.imshow(rows)
plt.yticks([(i + 0.5) * rows.height / (D + 1) for i in range(D + 1)], ["original"] + [f"d <= {d}" for d in
                                                                                    range(1, D + 1)])
plt.xticks([])
plt.show()

# %% [markdown]
# With the main job's model (`data/tokenizer`, 512 held-out images) decoding the first d depths gives
# PSNR 22.61, 27.81, 29.68, 30.28, 30.56, 30.72, 30.82 and 30.89 dB for d = 1..8: every depth adds detail,
# the first three the most.
#
# ## 5. An explorer: swap a code, watch the picture change
#
# Pick an image and a grid position: the explorer lists the D pixel codes and the D semantic codes stored there,
# lets you replace the pixel code at one depth with any other code, and decodes both versions. The change is
# local: the post-quant projection is causal in raster order (notebook 04), so only positions at and after the
# swapped one see it, and the decoder's convolutions spread it over a neighbourhood. On the semantic side, the
# same swap in the semantic codes moves the pooled embedding and with it the teacher-head prediction.

# %%
_, head = load_teacher(None if TEACHER == "shipped" else TEACHER)
K, G = model.cfg.pixel_quantizer.codebook_size, model.grid
image_w = widgets.IntSlider(0, 0, EVAL_IMAGES - 1, description="image")
row_w = widgets.IntSlider(3, 0, G - 1, description="row")
col_w = widgets.IntSlider(4, 0, G - 1, description="column")
depth_w = widgets.IntSlider(1, 1, D, description="depth")
code_w = widgets.IntText(int(pixel_codes[0, 3, 4, 0]), description="new code")
view = widgets.Output()
state: dict = {}


@torch.no_grad()
def explore(_=None) -> dict:
    """Decode the chosen image with one pixel code (and the same semantic code) swapped; show both."""
    i, r, c, d = image_w.value, row_w.value, col_w.value, depth_w.value - 1
    pix, sem = pixel_codes[i : i + 1].clone(), semantic_codes[i : i + 1].clone()  # (1, H, W, D)
    new = code_w.value % K
    pix_swapped, sem_swapped = pix.clone(), sem.clone()
    pix_swapped[0, r, c, d], sem_swapped[0, r, c, d] = new, new % model.cfg.semantic_quantizer.codebook_size
    before, after = model.decode(pix), model.decode(pix_swapped)  # (1, 3, 64, 64) each
    cls_before = CLASSES[head(model.decode_semantic(sem)).argmax().item()]
    cls_after = CLASSES[head(model.decode_semantic(sem_swapped)).argmax().item()]
    state.update(position=(i, r, c, d), pixel=pix[0, r, c].tolist(), semantic=sem[0, r, c].tolist(),
                 before=before, after=after, classes=(cls_before, cls_after))
    with view:
        clear_output(wait=True)
        print(f"image {i} ({CLASSES[labels[i]]}), position ({r}, {c}): pixel codes {state['pixel']}, "
              f"semantic codes {state['semantic']}; pixel depth {d + 1} -> code {new}")
        print(f"teacher head on the semantic codes: {cls_before} -> {cls_after} after the same swap")
        change = (after - before).abs().mean(1)[0]  # (64, 64)
        fig, ax = plt.subplots(1, 3, figsize=(7.5, 2.6))
        for a, img, title in ((ax[0], before, "codes as stored"), (ax[1], after, "one code swapped")):
            a.imshow(((img[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())
            a.set_title(title)
        ax[2].imshow(change.numpy(), cmap="magma")
        ax[2].add_patch(plt.Rectangle((c * 8 - 0.5, r * 8 - 0.5), 8, 8, fill=False, ec="cyan"))
        ax[2].set_title("|change|, swapped cell boxed")
        for a in ax:
            a.axis("off")
        plt.show()
    return state


for w in (image_w, row_w, col_w, depth_w, code_w):
    w.observe(explore, names="value")
display(widgets.VBox([widgets.HBox([image_w, row_w, col_w]), widgets.HBox([depth_w, code_w]), view]))
_ = explore()  # the first drawing

# %% [markdown]
# Driving the explorer from code, as a click would: choose a new code for depth 1 at the boxed cell. The callback
# fires, the reconstruction changes, and it changes most inside the swapped cell.

# %%
code_w.value = (int(pixel_codes[0, 3, 4, 0]) + 1) % K  # fires explore() through the observer
change = (state["after"] - state["before"]).abs().mean(1)[0]  # (64, 64)
inside = change[3 * 8 : 4 * 8, 4 * 8 : 5 * 8].mean().item()
print(f"mean |change| inside the cell {inside:.4f}, over the image {change.mean().item():.4f}")
assert state["position"] == (0, 3, 4, 0) and state["pixel"] == pixel_codes[0, 3, 4].tolist()
assert change.max() > 0, "a different code gives a different picture"
assert inside > change.mean().item(), "the change is largest where the code was swapped"
assert change[:3 * 8].abs().max() < change[3 * 8 :].abs().max(), "rows above see little of it (causal + local)"
