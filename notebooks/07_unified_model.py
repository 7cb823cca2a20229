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
# # 07 · From tokens to a unified model: reading and writing DualToken codes
#
# DualToken's point is not the tokenizer alone. The paper feeds both token types to one language model, which
# "surpasses VILA-U by 5.8 points on average across ten visual understanding benchmarks and delivers a 13%
# improvement on GenAI-Bench" (the abstract of its ICLR 2026 version: a comparison with another model). It also
# reports that within its own model "incorporating dual visual tokens outperforms using a single token type on
# both understanding and generation tasks": pixel tokens add fine detail, semantic tokens keep structure. The
# authors have not released that model. Here we build it at tiny-world scale, on a CPU, and test that second
# claim:
#
# 1. the token layout a language model reads (`model/token_layout.py`) and the cache of encoded images;
# 2. **understanding**: three small readers on one budget that see semantic tokens only, pixel tokens only, or
#    both, asked "which shape?", "what colour is the shape?", "what background?", "what fill?";
# 3. **generation**: a class-conditional autoregressive model (spatial transformer over the 8 x 8 grid + depth
#    transformer over each position's codes), pixel tokens only vs pixel + semantic tokens, judged by the
#    teacher on the decoded pixels;
# 4. the table that tests the paper's claim.
#
# **Runtime.** The default path loads the shipped models (`data/unified/`, float16) and re-measures them on
# held-out images: 78 s under `pytest --nbval-lax` here (2 Dec 2026, otherwise idle 2-core CPU, 1 thread).
# `DUALTOKEN_LITE_FULL=1` first retrains all ten models (six readers, four generators) with the trainers'
# defaults (the commands in `docs/unified_model.md`; about 50 minutes: the readers on one thread, 2.5-2.9 min
# each, the generators on both cores, 6.1-8.5 min each) and asserts the figures of
# `data/unified/results.json`. Every number the prose quotes is checked against
# `notebooks/figures/07_unified_model.json`.

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.token_layout import from_lm_sequence, to_lm_sequence
from dualtoken_lite.notebook_runtime import Figures, start
from dualtoken_lite.tinyworld.drawing import CLASSES, make_batch, to_tensor
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.unified import generator_training, reader_training
from dualtoken_lite.unified.embedding import CodeStackEmbedding, slot_offsets
from dualtoken_lite.unified.judge import Judge, held_out_images
from dualtoken_lite.unified.prompts import SamplingConfig, generate_images
from dualtoken_lite.unified.questions import QUESTION_NAMES, QUESTIONS, majority_baseline
from dualtoken_lite.unified.results import GENERATORS, READERS, UNIFIED_DIR
from dualtoken_lite.unified.token_cache import load_or_encode
from dualtoken_lite.unified.weights import count_parameters, load_model

FULL = start(0)  # seeds torch, uses cores - 1 threads; True under DUALTOKEN_LITE_FULL=1
figures = Figures("07_unified_model")
RESULTS = json.loads((UNIFIED_DIR / "results.json").read_text())  # what the trainers measured (1,024 samples)
work = Path(tempfile.mkdtemp(prefix="dtl07_"))
tokenizer = DualToken.from_pretrained(UNIFIED_TOKENIZER_DIR).eval()
if FULL:  # retrain every model with the trainers' defaults, as docs/unified_model.md's commands do
    runs = work / "runs"
    for seed in (0, 1):
        for variant in READERS:
            cfg = reader_training.ReaderTrainConfig(out=str(runs / f"reader-{variant}-s{seed}"),
                                                    cache_dir=str(work / "cache"))
            cfg.model.variant, cfg.loop.seed = variant, seed
            reader_training.run(cfg)
        for variant in GENERATORS:
            cfg = generator_training.GeneratorTrainConfig(out=str(runs / f"generator-{variant}-s{seed}"),
                                                          cache_dir=str(work / "cache"))
            cfg.model.variant, cfg.loop.seed = variant, seed
            generator_training.run(cfg)
    model_dirs = {**{f"reader-{v}": runs / f"reader-{v}-s0" / "model" for v in READERS},
                  **{f"generator-{v}": runs / f"generator-{v}-s0" / "model" for v in GENERATORS}}
else:
    model_dirs = {name: UNIFIED_DIR / name for name in [f"reader-{v}" for v in READERS] +
                  [f"generator-{v}" for v in GENERATORS]}
print({name: str(folder) for name, folder in model_dirs.items()})

# %% [markdown]
# ## 1. The token layout, and the images encoded once
#
# An image gives two code maps: pixel codes (B, 8, 8, 8) and semantic codes (B, 8, 8, 4). A language model
# reads them as one id sequence (notebook 06): raster positions, and at each position the pixel codes of depths
# 1..8 then the semantic codes of depths 1..4, L = 64 x 12 = 768 ids. Pixel ids are [0, 512), semantic ids
# [512, 1024): one vocabulary, no collisions. Seen as a grid, the sequence is a **stack** of S = 12 ids per
# position, and that is how both models below read it.
#
# The readers and generators train for hundreds of steps on the same images, so the tiny world is encoded once
# (`unified/token_cache.py`): train images 0..16,383 and held-out images 0..1,023, with each image's labels read
# from the generator's own description. We encode the held-out set here and check the cache against
# `model.encode`.

# %%
held = load_or_encode(tokenizer, UNIFIED_TOKENIZER_DIR, "eval", 0, 1024, work / "cache", progress=False)
stacks = held.stacks()  # (M, 64, 12) layout ids per position
images, labels = make_batch(0, 4, "eval")
with torch.no_grad():
    pixel, semantic = tokenizer.encode(to_tensor(images))  # (4, 8, 8, 8), (4, 8, 8, 4)
tokens = to_lm_sequence(pixel, semantic, held.layout)  # (4, 768)
assert torch.equal(tokens, held.tokens[:4]), "the cache holds exactly model.encode's codes in the layout"
assert all(torch.equal(a, b) for a, b in zip(from_lm_sequence(tokens, held.layout), (pixel, semantic)))
print("sequence", tuple(tokens.shape), "-> stacks", tuple(stacks.shape), "| first position's stack:",
      stacks[0, 0].tolist())
print("slot id offsets", slot_offsets(held.layout).tolist())

# %% [markdown]
# ## 2. One vector per position: the sum of its code embeddings
#
# The paper's unified model does not lengthen the sequence to hold two token types: at each position it embeds
# the pixel codes and the semantic codes and **adds** them. With a residual quantizer this has a natural start:
# if slot s's embedding table holds the codebook vectors $e_c$, the sum over a branch's slots is exactly the
# quantized vector the tokenizer rebuilds from those codes,
#
# $$x_n = P_{pix} \sum_{d=1}^{8} e^{pix}_{c_{n,d}} + P_{sem} \sum_{d=1}^{4} e^{sem}_{c_{n,8+d}} = P_{pix}\, q^{pix}_n + P_{sem}\, q^{sem}_n .$$
#
# Inline first (a gather and a sum), then the package's `CodeStackEmbedding`, which starts from the codebooks and
# keeps them trainable.

# %%
q_pix = tokenizer.pixel_quantizer.decode(pixel)  # (4, 8, 8, 32) quantized pixel vectors
book = tokenizer.pixel_quantizer.codebook_at(0).embed  # (512, 32), shared by the 8 depths
inline = book[pixel].sum(-2)  # (4, 8, 8, 32): gather each depth's vector, add them up
torch.testing.assert_close(inline, q_pix)
embed = CodeStackEmbedding(held.layout, "both", width=32, code_dim=32)
embed.init_from_tokenizer(tokenizer)
per_slot = embed.table(embed.local_codes(stacks[:4]) + embed.base)  # (4, 64, 12, 32) before the projections
torch.testing.assert_close(per_slot[..., :8, :].sum(-2), q_pix.flatten(1, 2))
print("sum of the 8 pixel-slot embeddings = the quantized pixel vector; the same holds for the 4 semantic slots")

# %% [markdown]
# ## 3. Understanding: three readers, one budget
#
# A reader is a 3-block transformer (width 96) over the 64 position vectors plus one token per question. One
# pass answers all four questions; a mask lets each question token see the image and itself only, so this
# equals four separate passes (tested in `tests/test_unified.py`). The readers differ in one thing: which codes
# they sum (semantic slots 8..11, pixel slots 0..7, or all 12). Each trained 600 steps x batch 64 on the 16,384
# cached training images, two seeds (`python -m dualtoken_lite train_reader --model.variant V --loop.seed S`).
#
# The questions and what answering them needs:

# %%
for name, (key, answers) in QUESTIONS.items():
    print(f"{name:10s} ({key}): {', '.join(answers)}")
baseline = majority_baseline(held.labels, held.labels)  # the best a reader blind to the image could do here
print("majority answer on the held-out set:", {q: round(100 * v, 1) for q, v in baseline.items()})

# %% [markdown]
# The shipped seed-0 readers, re-measured on the 1,024 held-out images (never trained on):

# %%
accuracy = {}
for variant in READERS:
    reader = load_model(model_dirs[f"reader-{variant}"], kind="reader")
    accuracy[variant] = reader_training.evaluate_reader(reader, held)
    print(f"{variant:9s} ({count_parameters(reader):,} parameters): " +
          ", ".join(f"{q} {100 * a:.1f} %" for q, a in accuracy[variant].items()))
    for q in QUESTION_NAMES:  # shipped: the trainer's own figures exactly; retrained: within seed noise
        shipped = RESULTS["readers"][variant]["seed0"]["accuracy"][q]
        assert abs(accuracy[variant][q] - shipped) < (0.03 if FULL else 1e-6), (variant, q, accuracy[variant][q])
        if not FULL:
            figures.check(f"reader_{variant}_{q}", accuracy[variant][q], tol=0.002)
fig, ax = plt.subplots(figsize=(7, 3))
for k, variant in enumerate(READERS):
    ax.bar(np.arange(4) + 0.27 * (k - 1), [100 * accuracy[variant][q] for q in QUESTION_NAMES], 0.27, label=variant)
ax.plot(np.arange(4), [100 * baseline[q] for q in QUESTION_NAMES], "k_", ms=30, label="majority")
ax.set(xticks=range(4), xticklabels=QUESTION_NAMES, ylabel="held-out accuracy (%)", ylim=(0, 100))
ax.legend(ncol=4, fontsize=8)
plt.show()

# %% [markdown]
# ## 4. Generation: a spatial transformer and a depth transformer
#
# $$p(\text{image} \mid \text{class}) = \prod_{n=1}^{64} \prod_{s=1}^{S} p(c_{n,s} \mid \text{class}, c_{<n}, c_{n,<s})$$
#
# The spatial transformer (4 blocks, width 128, causal over raster positions) reads the class token and the
# summed embeddings of the positions already drawn, and gives a context $h_n$; the depth transformer (1 block)
# starts from $h_n$ and draws the position's codes one after another in the layout's order (RQ-Transformer,
# VILA-U). Each slot's logits cover only its own codebook, so every emitted id is valid for its position and
# depth. The **pixel** generator models pixel codes; the **both** generator also semantic codes, which enter
# the sums the next positions read. Only pixel codes are decoded, by the tokenizer's decoder.
#
# A CPU-sized budget shaped the recipe (`docs/unified_model.md` has the runs behind each choice):
#
# - The generators model only the **first depth** of each residual stack, pixel depth 1 (and semantic depth 1),
#   and the decoder reads that one code (coarse to fine, as RQ-VAE allows): its reconstructions keep the shape
#   (the teacher still names 91 % of them, section 5), while deeper codes hold texture that costs a small model
#   most of its capacity. A first version that modelled 3 pixel depths for 800 steps drew fragments the teacher
#   named at 19 % (chance 12.5 %).
# - The class embedding is added to **every** position's input, so the prompt is in each position's residual
#   stream from the first step.
# - The spatial transformer's attention carries a **2-D rotary embedding** (`unified/rotary.py`): a query scores
#   each earlier cell by its grid offset, so "the cell above" means the same at every position instead of being
#   learned 64 times. At equal steps it lowered the held-out loss from 0.924 to 0.889 nats per code.
# - The model was **undertrained**: twice the steps lowered the held-out loss from 0.924 to 0.837. So the trainer
#   spends its 10 minutes on steps: bf16 autocast (the same loss as fp32, cheaper steps) on both cores, 3,200
#   steps x batch 32 (`python -m dualtoken_lite train_generator --model.variant V --loop.seed S`).
# - The depth transformer learns from **every position**: trained on the stacks of all 64 positions (the exact
#   loss) with one block, instead of two blocks on a random 32 of them, it reached a held-out loss of 0.831
#   instead of 0.860 in the same time.
# - Sampling uses **classifier-free guidance 1.75**: the logits are u + 1.75 (c - u), the prompted ones c pushed
#   away from the prompt-free ones u (one model gives both: the prompt is dropped 10 % of the time in training);
#   guidance 1.5 raised the teacher's accuracy by 9 points on the first-round generator. A lower temperature
#   does not help: many samples become an empty background, because a raster-order model starts a shape at one
#   position of low probability, and a lower temperature suppresses that start.
#
# Eight samples per class (rows: disc, square, triangle, plus, star, ring, crescent, heart), the trainers'
# sampling settings (temperature 1, no top-k, guidance 1.75, seed 0):

# %%
generators = {v: load_model(model_dirs[f"generator-{v}"], kind="generator") for v in GENERATORS}
sampling = SamplingConfig()  # the trainers' measurement settings: guidance 1.75
fig, ax = plt.subplots(1, 2, figsize=(11, 5.6))
for a, (variant, gen) in zip(ax, generators.items()):
    _, grid = generate_images(gen, tokenizer, torch.arange(8).repeat_interleave(8), sampling)  # (64, 64, 64, 3)
    a.imshow(grid.reshape(8, 8, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(512, 512, 3))
    a.set(title=f"generator: {variant} tokens", xticks=[], yticks=32 + 64 * np.arange(8), yticklabels=CLASSES)
plt.show()

# %% [markdown]
# ## 5. Judging the pixels: class accuracy and a Frechet distance
#
# The teacher (the tiny world's shape classifier) reads each decoded image: how often does a "star" prompt draw
# a star? And a Frechet distance between teacher embeddings of generated images and of held-out images (the FID
# formula with the teacher in place of Inception) says whether the samples spread like real ones: a sampler that
# drew one good image per class would score 100 % accuracy and a bad distance. The ceiling of any generator that
# decodes through this tokenizer is the same pair on the tokenizer's own reconstructions of other held-out
# images. Here 512 samples per generator (64 per class) to stay within minutes; the results table below uses
# the trainers' 1,024.

# %%
judge = Judge(held_out_images(0, 1024)[0])  # reference: held-out images 0..1023
COUNT = 1024 if FULL else 512
measured = {}
for variant, gen in generators.items():
    classes = torch.arange(8).repeat_interleave(COUNT // 8)
    _, pictures = generate_images(gen, tokenizer, classes, sampling)
    measured[variant] = judge(pictures, classes.numpy())
    print(f"{variant:6s}: teacher accuracy {100 * measured[variant]['teacher_accuracy']:.1f} %, "
          f"Frechet {measured[variant]['frechet']:.2f} ({COUNT} samples)")
    if FULL:  # a retrained generator, 1,024 samples: within seed noise of the shipped run's figures
        shipped = RESULTS["generators"][variant]["seed0"]["generation"]
        assert abs(measured[variant]["teacher_accuracy"] - shipped["teacher_accuracy"]) < 0.08, measured[variant]
        assert abs(measured[variant]["frechet"] - shipped["frechet"]) < 3.0, measured[variant]
    else:
        figures.check(f"generator_{variant}_accuracy", measured[variant]["teacher_accuracy"], tol=0.01)
        figures.check(f"generator_{variant}_frechet", measured[variant]["frechet"], tol=0.3)
ceiling = RESULTS["ceiling"]
for name, what in (("reconstructions_depth1", "from pixel depth 1, what the generators model"),
                   ("reconstructions", "from all 8 pixel depths"), ("originals", "the held-out originals")):
    print(f"ceiling, {what}: {100 * ceiling[name]['teacher_accuracy']:.1f} %, Frechet {ceiling[name]['frechet']:.2f}")

# %% [markdown]
# ## 6. The paper's claim at tiny scale
#
# The table from `data/unified/results.json` (`python -m dualtoken_lite unified_results`): reader accuracy on
# 1,024 held-out images for seeds 0 and 1, and generation over 1,024 samples each with the ceiling beside them.
# The paper: dual tokens beat a single token type on understanding and on generation.

# %%
from dualtoken_lite.unified.results import format_table  # noqa: E402

print(format_table(RESULTS))
for variant in READERS:  # the shipped seed-0 readers are the table's seed-0 readers
    assert all(abs(RESULTS["readers"][variant]["seed0"]["accuracy"][q] - accuracy[variant][q]) < (0.03 if FULL else
               1e-6) for q in QUESTION_NAMES)

# %% [markdown]
# **What the table shows** (two seeds of every model; the cell below asserts each statement on the table):
#
# - **Understanding: each token type answers its own questions, and both together answer all of them.** The
#   semantic-only reader names the shape (97.8 / 97.9 %) but is blind to appearance: colour 17.5 / 16.9 % and
#   background and fill at the majority answer. The pixel-only reader sees colour (89.4 / 89.7 %) and
#   background but names only 60.8 / 59.5 % of shapes. The reader of both matches the better single type on
#   shape, colour and background within 1 point. Fill is the exception: 41.3 / 45.6 % against the pixel
#   reader's 46.3 / 45.5 %, a seed spread of 4 points that this budget does not resolve. At this scale dual
#   tokens give the **union** of what each type knows; they do not beat the better type on its own question,
#   which the paper says dual tokens do (its +5.8 points are over VILA-U, another model, not over one token type).
# - **Generation: at this budget the samples do not tell the two generators apart; the likelihood does.** Both
#   draw their prompt's shape about three times in four: pixel codes alone 75.9 / 77.5 %, pixel + semantic codes
#   76.3 / 74.3 %, and their Frechet distances cross between the seeds (2.45 / 2.17 against 1.99 / 2.31). Yet the
#   generator that also writes semantic codes predicts the *pixel* codes of held-out images better on both
#   seeds, 1.100 / 1.093 nats per code against 1.167 / 1.174, though the semantic codes are never decoded: they
#   only enter the sums the next positions read. With the second round's weaker recipe (a two-block depth
#   transformer trained on half the positions) the gain showed in the samples too, 70.2 / 70.1 % against
#   60.0 / 60.5 % (`docs/unified_model.md`). The paper's direction (dual tokens generate better than one type)
#   holds in the likelihood; in what the teacher sees, semantic codes helped most while the generator was weakest.
# - **Near the ceiling.** The tokenizer's own reconstructions from pixel depth 1 are named 91.0 % of the time
#   (Frechet 1.20). The generator of both codes reaches 84 / 82 % of that accuracy (the issue asks for 80 %) at
#   1.7 / 1.9x the ceiling's Frechet distance (at most 2x asked). Its shapes are still sometimes rounded off:
#   squares, triangles and hearts are drawn worst (50-67 %), rings and discs best (95-100 %;
#   `per_class_accuracy` in the results).

# %%
table = RESULTS
both_r, pix_r, sem_r = (table["readers"][v] for v in ("both", "pixel", "semantic"))
for seed in ("seed0", "seed1"):
    a = {v: table["readers"][v][seed]["accuracy"] for v in READERS}
    assert a["semantic"]["shape"] > 0.95 and a["semantic"]["colour"] < 0.2  # semantics: shape, not colour
    assert a["pixel"]["colour"] > 0.85 and a["pixel"]["shape"] < 0.65  # pixels: colour, shapes only partly
    for q in ("shape", "colour", "background"):  # both: the better single type within 1 point
        assert a["both"][q] > max(a["semantic"][q], a["pixel"][q]) - 0.01, (seed, q)
    g = {v: table["generators"][v][seed]["generation"] for v in GENERATORS}
    nats = {v: table["generators"][v][seed]["heldout_loss"]["loss_pixel"] for v in GENERATORS}
    assert abs(g["both"]["teacher_accuracy"] - g["pixel"]["teacher_accuracy"]) < 0.05  # the samples: a tie
    assert nats["both"] < nats["pixel"] - 0.05  # the likelihood: semantic context predicts pixel codes better
    depth1 = ceiling["reconstructions_depth1"]
    assert g["both"]["teacher_accuracy"] >= 0.8 * depth1["teacher_accuracy"]  # the targets
    assert g["both"]["frechet"] <= 2 * depth1["frechet"]
    print(f"{seed}: generator of both codes / depth-1 ceiling: accuracy "
          f"{g['both']['teacher_accuracy'] / depth1['teacher_accuracy']:.2f}, Frechet "
          f"{g['both']['frechet'] / depth1['frechet']:.2f}x")
figures.save()  # under DUALTOKEN_LITE_WRITE_FIGURES=1: record this run's figures
