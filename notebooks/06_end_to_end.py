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
# # 06 · End to end: the trained tiny DualToken, its codes, and the tokens a language model reads
#
# Notebooks 01-05 built the pieces: vector and residual quantization, the tapped encoder, the decoder, the
# losses. The library's trainer puts them together; the README's main job trains the tiny DualToken from the
# tiny world's teacher (whose tower is also the tokenizer's starting point):
#
#     python -m dualtoken_lite.train --preset tiny --out runs/demo      # 1,200 steps x batch 32 (`make demo`)
#
# Its model ships as `data/tokenizer/`. Here we open it: reconstructions, how much of each codebook is used at
# each residual depth, what each depth adds to the picture, the token sequence a language model reads, and an
# explorer that swaps pixel codes and transplants semantic codes between images.
#
# **Runtime.** Default path: 75 s (`pytest --nbval-lax`, 6 Dec 2026, idle 2-core CPU, 1 thread); it loads the
# shipped tokenizer. With `DUALTOKEN_LITE_FULL=1` the notebook first runs the main job itself and asserts that its
# model gives the shipped one's figures: 19 min 25 s under `pytest --nbval-lax` here (2 Dec 2026, idle 2-core CPU,
# `DUALTOKEN_LITE_THREADS=2`), writing the training shards on first use included; `make demo` alone takes 8 min. Every figure quoted in the prose is checked against `notebooks/figures/06_end_to_end.json`.

# %%
import tempfile
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import clear_output, display

from dualtoken_lite.datasets.images import make_grid_image
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.evaluation.metrics import CodeUsage, psnr
from dualtoken_lite.evaluation.zero_shot import attribute_heads, tinyworld_score
from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.token_layout import TokenLayout, from_lm_sequence, to_lm_sequence
from dualtoken_lite.notebook_runtime import Figures, start
from dualtoken_lite.tinyworld.drawing import CLASSES, make_batch, to_tensor
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR
from dualtoken_lite.tinyworld.shards import sample_key
from dualtoken_lite.tinyworld.teacher import load_teacher
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.loop import run

FULL = start(seed=0)
figures = Figures("06_end_to_end")
EVAL_IMAGES = 512  # held-out images 0-511 of the committed eval shard, as in README
if FULL:  # the main job, exactly: the trainer's defaults for --preset tiny
    work = Path(tempfile.mkdtemp(prefix="dtl06_"))
    run(parse_args(["--preset", "tiny", "--out", str(work / "run"), "--eval_samples", str(EVAL_IMAGES)]))
    model_dir = work / "run" / "model"
else:
    model_dir = TOKENIZER_DIR
model = DualToken.from_pretrained(model_dir).eval()
teacher = load_teacher()  # the tiny SigLIP data/tokenizer/ distilled from (data/teacher/)
shape_head = attribute_heads(teacher)["shape"]  # zero-shot: pooled (B, E) -> cosine with each shape's prompts (B, 8)
scale = teacher.logit_scale.exp().item()  # SigLIP's learned t: cosines x t are the logits it was trained on
print(f"tokenizer from {model_dir}")

# %% [markdown]
# ## 1. What the main job gives
#
# The library's evaluation (`evaluation.loop.evaluate_codes`, the one the trainer runs) goes through the codes:
# encode to integers, decode the pixel codes, compare. PSNR and SSIM on RGB in [0, 1]; luma and chroma PSNR after
# BT.601; and the **zero-shot accuracy** SigLIP is measured by: the pooled embedding computed from the *semantic
# codes* against the teacher's text tower's embeddings of prompts such as "a star" or "a picture of a red shape",
# one classifier per attribute (shape, colour, fill, background), beside the teacher's own zero-shot accuracy on
# the same images (docs/method.md §6). The shipped tokenizer: PSNR 29.92 dB (luma 31.11, chroma 38.48), SSIM
# 0.907; zero-shot from the semantic codes: shape 94.3 %, colour 96.1 % (the teacher's own: 95.9 %,
# 96.7 %). A 16 x 16 thumbnail of these images keeps 24.95 dB
# (`data/recon_baselines.py`).

# %%
images, labels = make_batch(0, EVAL_IMAGES, "eval")
x, keys = to_tensor(images), [sample_key("eval", i) for i in range(EVAL_IMAGES)]  # (B, 3, 64, 64) in [-1, 1]
with torch.no_grad():  # the keys name each sample, so the score can read its attributes
    result = evaluate_codes(model, [{"image": x[i:i + 64], "key": keys[i:i + 64]} for i in range(0, EVAL_IMAGES, 64)],
                            semantic=tinyworld_score(teacher))
for key in ("psnr", "psnr_luma", "psnr_chroma", "ssim"):
    print(f"{key:12s} {result[key]:.4f}")
    figures.check(f"main_job/{key}", result[key], tol=0.01 if key == "ssim" else 0.3)
print(f"{'zero-shot':12s} {'semantic codes':>15s} {'teacher':>8s}")
for attribute, accuracy in result["semantic"].items():
    print(f"{attribute:12s} {100 * accuracy:14.1f} % {100 * result['teacher_semantic'][attribute]:6.1f} %")
    figures.check(f"main_job/zero_shot_{attribute}", 100 * accuracy, tol=1.0)
    figures.check(f"main_job/teacher_zero_shot_{attribute}", 100 * result["teacher_semantic"][attribute], tol=1.0)

# %% [markdown]
# ## 2. Reconstructions through the codes API
#
# `encode` turns images into two grids of integers: pixel codes `(B, 8, 8, 8)` (an 8 x 8 grid, residual depth
# 8) and semantic codes `(B, 8, 8, 4)` (depth 4); `decode` turns the pixel codes back into an image. Going
# through the integers gives exactly the forward pass's reconstruction.

# %%
D_PIX, D_SEM = model.cfg.pixel_quantizer.depth, model.cfg.semantic_quantizer.depth  # 8 and 4 for tiny
with torch.no_grad():
    pixel_codes, semantic_codes = model.encode(x)  # (B, 8, 8, 8) pixel, (B, 8, 8, 4) semantic
    x_hat = model.decode(pixel_codes)  # (B, 3, 64, 64)
    out = model(x[:64])  # the forward pass, on the first 64 images
print("pixel codes", tuple(pixel_codes.shape), "semantic codes", tuple(semantic_codes.shape))
assert pixel_codes.shape[-1] == D_PIX == 8 and semantic_codes.shape[-1] == D_SEM == 4
torch.testing.assert_close(x_hat[:64], out.reconstruction, rtol=1e-4, atol=1e-4)
assert abs(psnr(x_hat, x).mean().item() - result["psnr"]) < 1e-3, "the evaluation's PSNR is these images'"
grid = make_grid_image(torch.cat([x[:8], x_hat[:8].clamp(-1, 1)]), nrow=8)
plt.figure(figsize=(8, 2.2))
plt.imshow(grid)
plt.axis("off")
plt.title("held-out images (top) and their reconstructions from the pixel codes (bottom)")
plt.show()

# %% [markdown]
# ## 3. Codebook utilisation per depth
#
# Each branch has one codebook of K codes shared by its depths (docs/method.md §2). Utilisation at depth d is the
# fraction of the K codes that occur at depth d over the held-out set; perplexity $\exp(H)$ of the code
# histogram says how evenly they are used (K when uniform, 1 when one code takes everything). We count the codes
# inline and check the count against the library's `CodeUsage` and the evaluation above.

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
    print(f"{branch:8s}: utilisation per depth {[f'{v:.2f}' for v in used.tolist()]}")
ax[0].set(title="utilisation (fraction of K)", xlabel="depth d", ylim=(0, 1.05), xticks=range(1, D_PIX + 1))
ax[1].set(title="perplexity", xlabel="depth d", yscale="log", xticks=range(1, D_PIX + 1))
ax[0].legend()
plt.show()

# %% [markdown]
# Depth 1 uses about a quarter of the 512 pixel codes (0.28) and depths 2-3 about two thirds (0.71, 0.66): the
# first code of each patch is a coarse average colour, of which the tiny world has few; the detail that follows is
# more varied.
#
# ## 4. What each residual depth adds
#
# A residual quantizer describes a vector coarse to fine: $q^{(d)} = \sum_{k \le d} e_{c_k}$, each depth
# quantizing what the previous ones left over. Decoding the partial sum $q^{(d)}$ gives $\hat x^{(d)}$, the image
# the first d depths describe. Built inline (one gather and a sum over the first d code vectors), it equals the
# partial sums the quantizer returns (`RVQOutput.partial_sums`); `decode_quantized` turns each into an image.

# %%
embed = model.pixel_quantizer.codebooks[0].embed  # (K, d), shared by all depths
partial = [embed[pixel_codes[..., :d]].sum(dim=-2) for d in range(1, D_PIX + 1)]  # D x (B, H, W, d)
for d in range(D_PIX):
    torch.testing.assert_close(partial[d][:64], out.pixel.partial_sums[d], rtol=1e-5, atol=1e-5)
with torch.no_grad():
    by_depth = [model.decode_quantized(p) for p in partial]  # D x (B, 3, 64, 64)
gain = [psnr(r, x).mean().item() for r in by_depth]
print("PSNR decoding the first d depths:", [f"{g:.2f}" for g in gain])
assert abs(gain[-1] - result["psnr"]) < 1e-3, "all depths = the model's own reconstruction"
shown_images = [r.clamp(-1, 1) for r in by_depth]  # as displayed
# what depth d adds: |x^(d) - x^(d-1)|, mean over RGB, pixels in [0, 1]; (B, 64, 64) for d = 2..D
added = [(b - a).abs().mean(1) / 2 for a, b in zip(shown_images, shown_images[1:])]
mean_added = [a.mean().item() for a in added]
# the shape's outline: pixels within 2 px of a strong brightness edge of the original, (B, 64, 64)
grey = x.mean(1, keepdim=True)  # (B, 1, 64, 64)
steps = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1)) + F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(),
                                                                            (0, 0, 0, 1))
outline = F.max_pool2d((steps > 0.3).float(), 5, stride=1, padding=2)[:, 0] > 0
on_outline = [(a * outline).sum().item() / a.sum().item() for a in added]
print("mean |change| that depth d adds, d = 2..8:", [f"{v:.4f}" for v in mean_added])
print(f"share of it on the outline ({outline.float().mean():.0%} of the pixels):", [f"{v:.2f}" for v in on_outline])

# %% [markdown]
# The figure shows two held-out images. For each, the top row is the decoded image $\hat x^{(d)}$ from the first
# d depths (d = 1 is the coarsest picture the codes give); the bottom row is **what depth d adds**,
# $|\hat x^{(d)} - \hat x^{(d-1)}|$ averaged over RGB, on **one colour scale for every panel**: 0 (black) to
# `SCALE` = 0.1 (white) in [0, 1] pixel units, brighter changes clipped to white (the colour bar).

# %%
SCALE = 0.1  # the one colour scale of every "what depth d adds" panel: 0 .. SCALE in [0, 1] pixel units
shown = (0, 3)  # which held-out images
fig, ax = plt.subplots(2 * len(shown), D_PIX + 1, figsize=(12, 2.9 * len(shown)), layout="constrained")
for row, i in enumerate(shown):
    top, bottom = ax[2 * row], ax[2 * row + 1]
    top[0].imshow(((x[i] + 1) / 2).permute(1, 2, 0).numpy())
    top[0].set_title("original", fontsize=8)
    bottom[1].text(0.5, 0.5, "depth 1 adds\nthe whole image\n(above)", ha="center", va="center", fontsize=8)
    for d in range(D_PIX):
        top[d + 1].imshow(((shown_images[d][i] + 1) / 2).permute(1, 2, 0).numpy())
        top[d + 1].set_title(f"decoded, d = 1..{d + 1}", fontsize=8)
        if d:
            heat = bottom[d + 1].imshow(added[d - 1][i].numpy(), cmap="magma", vmin=0, vmax=SCALE)
            bottom[d + 1].set_title(f"added by d = {d + 1}", fontsize=8)
for a in ax.flat:
    a.axis("off")
fig.colorbar(heat, ax=ax[:, -1], shrink=0.6, label="|change|, mean over RGB ([0, 1] pixels)")
plt.show()

# %% [markdown]
# Decoding the first d depths gives 22.2, 26.7, 28.4, 29.2, 29.5, 29.7, 29.8 and 29.9 dB for d = 1..8: every
# depth adds, the first three the most. Depth 1 alone already places the shape and the background; depth 2
# makes the largest change of all (0.038 on average, in [0, 1] pixel units); from depth 3 on each depth changes
# less than the one before (0.0030 at depth 8), and more of what it changes lies on the shape's outline than of
# depth 2's change: 40 % of depth 2's, 44-48 % of each of depths 3-8's, where the outline holds 23 % of the pixels.

# %%
for d, key in ((0, "depth1"), (2, "depth3"), (7, "depth8")):
    figures.check(f"main_job/psnr_{key}", gain[d], tol=0.3)
figures.check("main_job/added_by_depth2", mean_added[0], tol=0.003)
figures.check("main_job/added_by_depth8", mean_added[-1], tol=0.0005)
figures.check("main_job/outline_share_depth2", on_outline[0], tol=0.02)
figures.check("main_job/outline_share_depth8", on_outline[-1], tol=0.02)
figures.check("main_job/outline_pixels", outline.float().mean().item(), tol=0.005)
assert all(a < b for a, b in zip(gain, gain[1:])), "every depth adds"
assert all(a > b for a, b in zip(mean_added, mean_added[1:])), "each depth changes less than the one before"
assert min(on_outline[1:]) > on_outline[0], "later depths work more on the outline than depth 2"

# %% [markdown]
# ## 5. Tokens for a language model
#
# A multimodal model reads an image as one sequence of integer ids (`model/token_layout.py`). Per grid position,
# in raster order: the pixel codes of depths 1..8, then the semantic codes of depths 1..4. Ids never collide:
# pixel ids are the codes themselves, semantic ids are shifted past the pixel vocabulary, and two specials
# `<boi>`/`<eoi>` wrap the image. The round trip image -> codes -> sequence -> codes -> image is exact.

# %%
layout = TokenLayout.from_config(model.cfg, specials=True)
tokens = to_lm_sequence(pixel_codes[:2], semantic_codes[:2], layout)  # (2, L)
back_pixel, back_semantic = from_lm_sequence(tokens, layout)
assert torch.equal(back_pixel, pixel_codes[:2]) and torch.equal(back_semantic, semantic_codes[:2])
print(f"tiny: L = {layout.length} tokens per image = 8 x 8 positions x (8 + 4) codes + 2 specials; "
      f"vocabulary {layout.vocab_size}: pixel [0, {layout.pixel_vocab}), semantic "
      f"[{layout.semantic_offset}, {layout.semantic_offset + layout.semantic_vocab}), <boi> {layout.boi}, "
      f"<eoi> {layout.eoi}")
print("first position:", tokens[0, :1 + D_PIX + D_SEM].tolist())
paper = TokenLayout.from_config(model_preset("so400m-384"), specials=True)
print(f"paper (so400m-384): L = {paper.length} = 27 x 27 x (8 + 8) + 2, vocabulary {paper.vocab_size}")
assert layout.length == 8 * 8 * 12 + 2 and paper.length == 27 * 27 * 16 + 2

# %% [markdown]
# 11,666 tokens for one 384 px image is far too long for a language model's context. The paper's model does
# not lengthen the sequence: at each of the 729 positions it **sums the embeddings of that position's codes**
# (pixel and semantic) into one input vector, and a small depth transformer predicts the stack of codes of a
# position from the big model's output there (as RQ-Transformer and VILA-U do). So the sequence stays 729 long
# whatever the depth. Notebook 07 builds such a model at tiny scale.
#
# ## 6. An explorer: swap a pixel code, transplant semantic codes
#
# Two controls, one per vocabulary:
#
# * **Pixel**: pick an image, a grid cell and a pixel depth (1..8); the box shows the code stored there and takes
#   a new one. The change is local: the post-quant attention is causal in raster order (notebook 04), so only
#   the swapped position and later ones see it, and the decoder's convolutions spread it over a neighbourhood.
# * **Semantic**: transplant the semantic codes of a *source* image into the chosen image, over a square of
#   side s around the chosen cell (s = 8: every position). The pixel decoder never reads semantic codes, so
#   the picture does not change; what changes is which shape the teacher's zero-shot head reads from them.

# %%
def swap_pixel(i: int, r: int, c: int, depth: int, new: int) -> dict:
    """Decode image i with the pixel code at (r, c, depth 1..8) replaced by ``new``: before, after, |change|."""
    pix = pixel_codes[i:i + 1].clone()  # (1, H, W, D_pix)
    swapped = pix.clone()
    swapped[0, r, c, depth - 1] = new
    with torch.no_grad():
        before, after = model.decode(pix), model.decode(swapped)  # (1, 3, 64, 64) each
    return {"before": before, "after": after, "change": (after - before).abs().mean(1)[0], "stored": pix[0, r, c]}


@torch.no_grad()
def transplant_semantic(i: int, source: int, r: int, c: int, side: int) -> dict:
    """Image i's semantic codes with image ``source``'s in a side x side square at (r, c): the zero-shot shape
    head's probabilities (softmax of t x cosine)."""
    G = model.grid
    top, left = min(max(r - side // 2, 0), G - side), min(max(c - side // 2, 0), G - side)
    sem = semantic_codes[i:i + 1].clone()  # (1, H, W, D_sem)
    sem[0, top:top + side, left:left + side] = semantic_codes[source, top:top + side, left:left + side]
    probs = (scale * shape_head(model.decode_semantic(sem))).softmax(-1)[0]  # (8,)
    return {"probs": probs, "square": (top, left, side)}


print(swap_pixel(0, 3, 4, 1, 7)["change"].shape, transplant_semantic(0, 1, 3, 4, 8)["probs"].shape)

# %% [markdown]
# The widgets call these two functions; nothing else happens in the callbacks.

# %%
K, G = model.cfg.pixel_quantizer.codebook_size, model.grid
w = {"image": widgets.IntSlider(0, 0, EVAL_IMAGES - 1, description="image"),
     "row": widgets.IntSlider(3, 0, G - 1, description="row"), "col": widgets.IntSlider(4, 0, G - 1, description="col"),
     "depth": widgets.IntSlider(1, 1, D_PIX, description="pixel depth"),
     "code": widgets.BoundedIntText(0, 0, K - 1, description="new code"),
     "source": widgets.IntSlider(1, 0, EVAL_IMAGES - 1, description="sem. source"),
     "side": widgets.IntSlider(0, 0, G, description="sem. side")}
view = widgets.Output()


def follow_selection(_=None) -> None:
    """When image, cell or depth changes, the code box shows the code stored there (a swap starts from it)."""
    w["code"].value = int(pixel_codes[w["image"].value, w["row"].value, w["col"].value, w["depth"].value - 1])


def draw(_=None) -> None:
    """Redraw: pixel swap (stored vs new code) and the zero-shot shape head on the transplanted semantic codes."""
    i, r, c = w["image"].value, w["row"].value, w["col"].value
    px = swap_pixel(i, r, c, w["depth"].value, w["code"].value)
    sem = transplant_semantic(i, w["source"].value, r, c, w["side"].value)
    with view:
        clear_output(wait=True)
        top = sem["probs"].argmax().item()
        print(f"image {i} ({CLASSES[labels[i]]}), cell ({r}, {c}): pixel codes {px['stored'].tolist()}, "
              f"semantic codes {semantic_codes[i, r, c].tolist()}")
        print(f"semantic codes of image {w['source'].value} ({CLASSES[labels[w['source'].value]]}) in a "
              f"{w['side'].value} x {w['side'].value} square -> head reads {CLASSES[top]} ({sem['probs'][top]:.2f})")
        plot_swap(px, r, c)


def plot_swap(px: dict, r: int, c: int) -> None:
    """Before, after and |change| (mean over RGB, [-1, 1] units, its own scale) of one pixel-code swap."""
    fig, ax = plt.subplots(1, 3, figsize=(8.5, 2.6), layout="constrained")
    for a, img, title in ((ax[0], px["before"], "codes as stored"), (ax[1], px["after"], "pixel code swapped")):
        a.imshow(((img[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())
        a.set_title(title, fontsize=9)
    heat = ax[2].imshow(px["change"].numpy(), cmap="magma", vmin=0)
    ax[2].add_patch(plt.Rectangle((c * 8 - 0.5, r * 8 - 0.5), 8, 8, fill=False, ec="cyan"))
    ax[2].set_title("|change|, cell boxed", fontsize=9)
    fig.colorbar(heat, ax=ax[2], shrink=0.8)
    for a in ax:
        a.axis("off")
    plt.show()


for name in ("image", "row", "col", "depth"):
    w[name].observe(follow_selection, names="value")
for widget in w.values():
    widget.observe(draw, names="value")
display(widgets.VBox([widgets.HBox([w["image"], w["row"], w["col"]]), widgets.HBox([w["depth"], w["code"]]),
                      widgets.HBox([w["source"], w["side"]]), view]))
follow_selection()  # the code box starts on the stored code of image 0, cell (3, 4), depth 1 ...
w["side"].value = G  # ... the whole semantic grid of image 1 is transplanted, and the depth-1 code of the cell
w["code"].value = int(pixel_codes[0, 0, 0, 0])  # becomes the top-left corner's (the background's): a swap to see

# %% [markdown]
# As it opens, the explorer shows a swap: the depth-1 code of cell (3, 4), inside the shape, replaced by the code
# the top-left corner of the same image has there (background), so the cell takes on the background's colour;
# and a whole-grid semantic transplant from image 1. Move any control to try others. The same opening swap,
# drawn outside the widget (so that it shows wherever the notebook is read):

# %%
opening = swap_pixel(0, 3, 4, 1, int(pixel_codes[0, 0, 0, 0]))
print(f"image 0, cell (3, 4), depth 1: code {int(opening['stored'][0])} -> {int(pixel_codes[0, 0, 0, 0])}")
plot_swap(opening, 3, 4)
assert opening["change"].max() > 0, "the opening swap changes the picture"

# %% [markdown]
# What the explorer shows, computed for every value its controls can take (this is also the test of the
# callbacks: the functions behind them run over each slider's whole range, whatever the sliders show now).
# First the pixel side: at every depth, a different code changes the picture, most inside the swapped cell,
# and the rows above the cell see the least of it.

# %%
i, r, c = 0, 3, 4
for depth in range(1, D_PIX + 1):
    stored = int(pixel_codes[i, r, c, depth - 1])
    change = swap_pixel(i, r, c, depth, (stored + 1) % K)["change"]  # (64, 64)
    inside = change[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].mean().item()
    print(f"depth {depth}: mean |change| in the cell {inside:.4f}, over the image {change.mean():.4f}")
    if depth in (1, 5, 6, 8):
        figures.check(f"explorer/swap_change_in_cell_depth{depth}", inside, tol=0.02)
    assert change.max() > 0 and inside > change.mean(), "the change is largest where the code was swapped"
    assert change[: r * 8].max() < change[r * 8:].max(), "rows above see little of it (causal + local)"
    assert torch.equal(swap_pixel(i, r, c, depth, stored)["change"], torch.zeros(64, 64)), "same code, same image"
for row in range(G):
    for col in range(G):
        assert swap_pixel(5, row, col, D_PIX, 0)["change"].shape == (64, 64)

# %% [markdown]
# Late depths are not all gentle knobs. The codebook is shared by all depths, so the id after a late depth's
# stored one can be a full-size vector: here the depth-5 swap changes the cell by 0.20 on average, half as much as
# the depth-1 swap (0.41), and the depth-8 swap changes it by 0.11, four times as much as the depth-6 swap (0.025).
# How large a wrong late-depth code's mistake is depends on which code it is, not on its depth alone.
#
# Then the semantic side: transplant the semantic codes of an image of another class over a growing square.
# The head is the teacher's zero-shot shape classifier ("a disc", "a square", ... through its text tower). Squares
# up to side 4 leave its reading on the original class; at side 5 the original class is down to 0.31, and at sides
# 6 and 7 a grid that is part one image and part the other reads as neither. The whole grid gives the source's
# class 0.20 here: exactly what the source image's own codes give it, since the pooled embedding depends on the
# semantic codes alone, and this source is one the codes read poorly. Over 100 pairs, below, the whole-grid
# transplant reads as the source's class in most.

# %%
source = next(j for j in range(1, EVAL_IMAGES) if labels[j] != labels[i])
follows, stays = [], []  # p(source's class), p(original class) per side
for side in range(0, G + 1):
    probs = transplant_semantic(i, source, r, c, side)["probs"]
    follows.append(probs[labels[source]].item())
    stays.append(probs[labels[i]].item())
    print(f"side {side}: p({CLASSES[labels[source]]}) = {follows[-1]:.2f}, p({CLASSES[labels[i]]}) = {stays[-1]:.2f}")
for side in (4, 5, 6, 7):
    figures.check(f"explorer/p_original_side{side}", stays[side], tol=0.1)
    figures.check(f"explorer/p_source_side{side}", follows[side], tol=0.1)
figures.check("explorer/p_source_side8", follows[G], tol=0.05)
moved = np.mean([transplant_semantic(j, j + 1, 3, 4, G)["probs"].argmax().item() == labels[j + 1]
                 for j in range(0, 200, 2)])
print(f"whole-grid transplants read as the source's class: {100 * moved:.0f} % of 100 pairs")
figures.check("explorer/transplant_reads_source_percent", 100 * moved, tol=3)
assert follows[-1] > follows[0], "the more codes come from the source, the more the head reads the source"

# %% [markdown]
# A whole-grid transplant reads as the source's class in 93 % of 100 image pairs (zero-shot shape from the
# semantic codes on the held-out set: 94.3 %): the class lives in the semantic codes, and the pixel codes, untouched, still
# draw the original image. That is the split DualToken makes: one vocabulary for what the image looks like, one
# for what it is.

# %%
figures.save()
