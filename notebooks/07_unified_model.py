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
# # 07 · One model that reads and writes text and DualToken images
#
# DualToken's point is not the tokenizer alone. The paper feeds both token types to one language model and
# reports that "incorporating dual visual tokens outperforms using a single token type on both understanding and
# generation tasks": pixel tokens add fine detail, semantic tokens keep structure. The authors have not released
# that model. Here we build it at tiny-world scale, on a CPU: **one** decoder-only transformer that draws an image
# from a caption and writes a caption (or answers a question) about an image, trained on both tasks in one run.
#
# 1. the sequence it reads: caption words and image positions in one vocabulary;
# 2. one image position = one vector, the sum of its code embeddings;
# 3. one sampling step of the main + depth transformer, built inline and checked equal to the library;
# 4. the shipped model drawing from captions, including colour-shape pairs it never saw with text;
# 5. the same model captioning held-out images and answering questions about them;
# 6. the variants (pixel tokens only, pixel + semantic tokens), three seeds each, next to the paper's claim.
#
# Three terms used below. **Teacher-forced**: a model's loss on a real sequence, each token predicted from the real
# tokens before it (no sampling). **Nats per code**: that loss, the mean negative natural log of the probability
# given to each real code. **Guidance** (classifier-free, Ho & Salimans 2022): the model is trained to draw both from
# a caption and from the empty caption; sampling mixes the two predictions' logits as u + s (c - u), where s = 1 is
# the plain conditional model and s > 1 follows the caption harder.
#
# **Runtime.** The default path loads the shipped models (`data/unified/`, float16, about 4 MB each) and the figures
# of `data/unified/results.json`, and re-measures a small part of them. `DUALTOKEN_LITE_FULL=1` retrains the two
# shipped models with the trainer's defaults (16-19 minutes each on one core of a CPU with bf16 kernels, two side by
# side; longer in fp32 on a CPU without them; `docs/unified_model.md` has every command). Every number the prose quotes is checked against `notebooks/figures/07_unified_model.json` or read from
# `results.json`.

# %%
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.notebook_runtime import Figures, start
from dualtoken_lite.tinyworld.captions import CLASSIFIED, FIELDS
from dualtoken_lite.tinyworld.drawing import make_samples
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR, UNIFIED_DIR
from dualtoken_lite.unified import trainer
from dualtoken_lite.unified.generate import generate_images
from dualtoken_lite.unified.judge import answer_accuracy
from dualtoken_lite.unified.rotary import token_cells
from dualtoken_lite.unified.sampling import SamplingConfig, draw_position, guide, write_answers
from dualtoken_lite.unified.sequences import (
    ANSWER_LENGTH,
    CAPTION,
    PROMPT_LENGTH,
    QUESTION_IDS,
    TEXT_VOCABULARY,
    answer_block,
    prompt_block,
    word_ids,
)
from dualtoken_lite.unified.token_cache import HELD_OUT_NAMES, load_or_encode
from dualtoken_lite.unified.weights import count_parameters, load_model

FULL = start(0)  # seeds torch, uses cores - 1 threads; True under DUALTOKEN_LITE_FULL=1
figures = Figures("07_unified_model")
RESULTS = json.loads((UNIFIED_DIR / "results.json").read_text())  # every run, judged (unified_results)
work = Path(tempfile.mkdtemp(prefix="dtl07_"))
tokenizer = DualToken.from_pretrained(TOKENIZER_DIR).eval()
if FULL:  # retrain the shipped models with the trainer's defaults, as docs/unified_model.md's commands do
    for variant in ("both", "pixel"):
        cfg = trainer.UnifiedTrainConfig(out=str(work / f"{variant}-s0"), cache_dir=str(work / "cache"))
        cfg.model.variant = variant
        trainer.run(cfg)
    model_dirs = {v: work / f"{v}-s0" / "model" for v in ("both", "pixel")}
else:
    model_dirs = {v: UNIFIED_DIR / v for v in ("both", "pixel")}
models = {v: load_model(folder) for v, folder in model_dirs.items()}
model = models["both"]
print({v: f"{count_parameters(m):,} parameters" for v, m in models.items()})

# %% [markdown]
# ## 1. One sequence, one vocabulary
#
# The words are the tiny world's caption vocabulary (`tinyworld/vocabulary.py`: 41 words and the specials
# `<pad> <unk> <end> <start>`) plus the model's markers: `<boi>` (an image begins), `<caption>` (write a caption)
# and one question marker per attribute (`<shape?>`, `<colour?>`, `<fill?>`, `<background?>`). An image position
# is not a word: it is a stack of codes. The two tasks have fixed layouts (`unified/sequences.py`):
#
#     text -> image   [<pad> .. <start> w_1 .. w_k <end>] [<boi>] [x_0 .. x_63]        prompt: 18 slots, left-padded
#     image -> text   [<boi>] [x_0 .. x_63] [<caption> w_1 .. w_k <end> <pad> ..]      answer: 18 slots
#
# In the first, the output at `<boi>` predicts position 0's stack and the output at x_{n-1} predicts x_n; in the
# second, the output at the marker predicts the first word. Attention is causal and nothing is masked: the
# prompt's padding is made of ordinary tokens, so training and cached sampling see exactly the same thing.

# %%
held = load_or_encode(tokenizer, TOKENIZER_DIR, "eval", 0, 512, work / "cache", progress=False)
prompt = prompt_block(["a small red star on a photo"])  # (1, 18)
answer, targets = answer_block(torch.tensor([QUESTION_IDS["colour"]]), [word_ids("red", 16)])  # (1, 18) x 2


def show(ids) -> str:
    return " ".join(TEXT_VOCABULARY.words[i] for i in ids)


print("text -> image:", show(prompt[0].tolist()), "<boi>", "[x_0 .. x_63]")
print("image -> text:", "<boi> [x_0 .. x_63]", show(answer[0].tolist()))
print("  scored next words:", [TEXT_VOCABULARY.words[t] for t in targets[0].tolist() if t >= 0])
print("vocabulary:", len(TEXT_VOCABULARY), "ids; lengths", PROMPT_LENGTH + 1 + 64, "and", 1 + 64 + ANSWER_LENGTH)
assert prompt[0, -1].item() == TEXT_VOCABULARY.ids["<end>"] and len(TEXT_VOCABULARY) == 51

# %% [markdown]
# ## 2. An image position: the sum of its code embeddings
#
# Each position of the 8 x 8 grid has 12 codes: pixel depths 1..8, then semantic depths 1..4 (the layout of
# `model/token_layout.py`, notebook 06). The paper does not lengthen the sequence to hold both token types: it
# embeds every code of a position and adds them up, so a position is one input whatever the number of codes
# (`unified/embedding.py`). The "pixel" variant reads the 8 pixel codes, "both" all 12; each code table starts as
# the tokenizer's codebook, so the pixel slots' sum starts as the quantized vector the tokenizer decodes.

# %%
stacks = held.stacks[:2]  # (2, 64, 12) layout ids
embed = model.image_embed
per_slot = embed.per_slot(embed.local_codes(stacks))  # (2, 64, 12, C): one vector per code
x = model.embed_image(stacks)  # (2, 64, C): their sum + the grid position's embedding
assert torch.allclose(per_slot.sum(2) + model.grid_pos, x, atol=1e-5)
print("stack of position 0:", stacks[0, 0].tolist(), "->", tuple(x.shape))

# %% [markdown]
# ## 3. One sampling step, inline
#
# Two transformers (RQ-Transformer, Lee et al. 2022): the **main** one runs causally over the sequence; its
# output h_n at the token before position n is the context of that position. The **depth** transformer then draws
# the position's codes one after another, each from its own codebook: its input is [h_n, e(c_1), .., e(c_{s-1})],
# and slot s's head gives the logits of code s. With guidance, the same steps run on the empty prompt beside the
# caption and the logits are mixed. Below: the first position of "a small red star on a photo", most likely
# code at each slot (temperature 0), built from the model's parts, then checked against the library's sampler.

# %%
guidance = RESULTS["sampling"]["guidance"]
with torch.no_grad():
    prompts = torch.cat([prompt, prompt_block([[]])])  # the caption, then the empty prompt: (2, 18)
    x = torch.cat([model.embed_prompt(prompts), model.boi(2)], 1)  # (2, 19, C): prompt slots, then <boi>
    h = model.main(x, model.turns(token_cells(PROMPT_LENGTH, 0)))[:, -1]  # (2, C): the context of x_0
    inputs, codes = (h + model.depth_pos[0])[:, None], []  # (2, 1, C)
    for s in range(len(model.slots)):
        out = model.depth(inputs)[:, -1]  # (2, C): the depth transformer's output at slot s
        head = model.pixel_head if s < model.num_pixel else model.semantic_head
        logits = guide(head(out[:1]), head(out[1:]), guidance)  # (1, K): u + s (c - u)
        codes.append(int(logits.argmax()))
        if s + 1 < len(model.slots):  # the chosen code's embedding is the next slot's input, on both rows
            e = embed.per_slot(torch.tensor([[codes]]))[0, 0, s]  # (C,)
            inputs = torch.cat([inputs, (e + model.depth_pos[s + 1]).expand(2, 1, -1)], 1)  # (2, s + 2, C)
    library = draw_position(model, h, SamplingConfig(temperature=0, guidance=guidance), guided=True, rng=None)
print("position 0's codes, inline :", codes)
print("                    library:", library[0].tolist())
assert codes == library[0].tolist()

# %% [markdown]
# The library does the same with key/value caches (each new token costs one token's work), and feeds the sum of
# the drawn codes' embeddings back into the main transformer as the next position's input
# (`unified/sampling.py`). A test checks that the cached path equals the full forward pass.
#
# ## 4. Drawing from captions
#
# Captions of three kinds: ones like the held-out prompts, and two of the eight **held-out combinations** (shape i
# with colour bin i mod 7): no image showing one was ever paired with text in training, so drawing "a blue star"
# needs "blue" learned from other shapes and "star" from other colours. Sampling settings: those of `results.json`,
# chosen on the captions of eval images 512-767 only (guidance 4). Look before reading section 6: at this budget the
# model follows a caption only in part, its colour more often than its shape, and its shapes are often blobs.

# %%
show_prompts = ["a small red star on a photo", "a large green heart", "a striped disc on a wavy background",
                "a " + HELD_OUT_NAMES[4], "a " + HELD_OUT_NAMES[1]]
sampling = SamplingConfig(**RESULTS["sampling"])
t0 = time.perf_counter()
_, samples = generate_images(model, tokenizer, [p for p in show_prompts for _ in range(8)], sampling)
seconds = time.perf_counter() - t0
fig, axes = plt.subplots(len(show_prompts), 8, figsize=(12, 1.6 * len(show_prompts)))
for i, ax in enumerate(axes.flat):
    ax.imshow(samples[i])
    ax.set_axis_off()
for r, p in enumerate(show_prompts):
    axes[r, 0].set_title(p + ("   (held-out pair)" if r >= 3 else ""), loc="left", fontsize=9)
plt.tight_layout()
plt.show()
print(f"{len(samples)} images in {seconds:.1f} s ({torch.get_num_threads()} threads)")

# %% [markdown]
# ## 5. Reading held-out images
#
# The same model, given an image's codes and `<caption>`, writes a caption; given a question marker, a one-word
# answer (greedy decoding). Held-out images, their true attributes, and what it says:

# %%
images, _ = make_samples(0, 6, "eval")
captions = write_answers(model, held.stacks[:6], torch.full((6,), CAPTION))
answers = {q: write_answers(model, held.stacks[:6], torch.full((6,), QUESTION_IDS[q])) for q in QUESTION_IDS}
fig, axes = plt.subplots(1, 6, figsize=(15, 3.2))
for i, ax in enumerate(axes):
    truth = [CLASSIFIED[f][int(held.attributes[i, FIELDS.index(f)])] for f in QUESTION_IDS]
    said = [TEXT_VOCABULARY.decode(answers[q][i]) for q in QUESTION_IDS]
    ax.imshow(images[i])
    ax.set_axis_off()
    ax.set_title(f"{TEXT_VOCABULARY.decode(captions[i])}\nanswers: {' / '.join(said)}\ntrue: {' / '.join(truth)}",
                 fontsize=7)
plt.tight_layout()
plt.show()
measured = answer_accuracy(model, held)
print("exact answers on eval 0-511:", {q: round(v, 3) for q, v in measured.items()})
for q, v in measured.items():
    figures.check(f"{'full' if FULL else 'default'}/answers_{q}", v, tol=0.004 if not FULL else 0.05)
    if not FULL:  # the shipped model is the run results.json judged (2 of 512 answers: thread-count rounding)
        assert abs(v - RESULTS["runs"]["both-s0"]["answers"][q]) <= 0.004

# %% [markdown]
# ## 6. Pixel tokens only, or pixel + semantic tokens
#
# Two variants on one budget (the same model, data, steps and seeds; only the codes of each image position
# differ), three seeds each, judged on what a user sees (unified/judge.py):
#
# * **generation**: 1,024 samples (two per caption of eval images 0-511), read on their decoded pixels by the
#   teacher's zero-shot classifier and by an attribute classifier trained apart from it (`data/classifier/`), per
#   attribute the caption names; a Frechet distance of teacher embeddings to eval images 1024-2047; and 32 samples
#   of each held-out combination, scored on shape and colour;
# * **understanding**: exact answers to the four questions on eval images 0-511.
#
# Beside them, the **ceiling**: the same judges on the tokenizer's full-depth reconstructions of the same images.

# %%
runs = RESULTS["runs"]
ceiling = RESULTS["ceilings"]["reconstructions"]
variants = {v: [r for r in runs.values() if r["variant"] == v] for v in ("pixel", "both")}


def seeds(v: str, get) -> list[float]:
    return [get(r) for r in variants[v]]


def beyond_spread(get) -> bool:
    """Whether the two variants differ beyond their seed spread: their seeds' ranges do not overlap."""
    a, b = seeds("pixel", get), seeds("both", get)
    return max(a) < min(b) or max(b) < min(a)


rows = {
    "generation, teacher: shape": lambda r: r["generation"]["teacher"]["shape"],
    "generation, teacher: colour": lambda r: r["generation"]["teacher"]["colour"],
    "generation, classifier: shape": lambda r: r["generation"]["classifier"]["shape"],
    "generation, classifier: colour": lambda r: r["generation"]["classifier"]["colour"],
    "generation: Frechet distance": lambda r: r["generation"]["frechet"],
    "held-out pairs, teacher: shape": lambda r: r["combinations"]["teacher"]["shape"],
    "held-out pairs, teacher: colour": lambda r: r["combinations"]["teacher"]["colour"],
    "understanding: shape": lambda r: r["answers"]["shape"],
    "understanding: colour": lambda r: r["answers"]["colour"],
    "understanding: fill": lambda r: r["answers"]["fill"],
    "understanding: background": lambda r: r["answers"]["background"],
}
print(f"{'':34s} {'pixel (seeds)':>16s} {'both (seeds)':>16s}  beyond the spread?")
for name, get in rows.items():
    p, b = seeds("pixel", get), seeds("both", get)
    print(f"{name:34s} {' / '.join(f'{v:.3f}' for v in p):>16s} {' / '.join(f'{v:.3f}' for v in b):>16s}  "
          f"{'yes' if beyond_spread(get) else 'no'}")
print("ceiling (full-depth reconstructions): teacher shape", round(ceiling["teacher"]["shape"], 3), "colour",
      round(ceiling["teacher"]["colour"], 3), "| Frechet", round(ceiling["frechet"], 3), "| first depth only:",
      round(RESULTS["ceilings"]["reconstructions_depth1"]["frechet"], 3))

# %% [markdown]
# **What it shows, beside the paper's claim.**
#
# *Understanding: dual tokens help, as the paper says.* On every seed, the model that reads pixel + semantic codes
# answers shape, colour and background better than the model that reads pixel codes alone, beyond the seed spread
# (the largest gap: background, about 89-91 % against 73-76 %; shape 92-94 % against 85-92 %); fill is within the
# spread (neither model, nor the teacher, reads the paint's texture). Against the teacher's own zero-shot reading
# of the same images, the dual model is within 2 points on colour, at the teacher's level on fill, above it on
# background, and 2.1-3.5 points below it on shape.
#
# *Generation: the model follows the caption in part; on it the two variants are within the seed spread.* With
# guidance 4 the teacher reads the prompted colour in 48-65 % of the dual model's samples and shape in 29-32 %
# (chance: 14.3 and 12.5 %; ceiling 92-96 %), so the captions steer the samples, far from the ceiling. The pixel
# model's seeds overlap the dual model's on every generation figure (both judges, the Frechet distance, the
# held-out pairs), so at this scale the paper's generation claim (semantic tokens keep structure) is neither
# reproduced nor contradicted: any difference is smaller than three seeds' spread. With a one-block depth
# transformer the pixel model generated better beyond the spread (`docs/unified_model.md`, the fourth round): the
# dual model writes twelve codes per position to the pixel model's eight, and the second block closed that gap.

# %%
def spread(v: str, get) -> tuple[float, float]:
    return min(seeds(v, get)), max(seeds(v, get))


for q in ("shape", "colour", "background"):
    assert beyond_spread(lambda r, q=q: r["answers"][q]) and spread("both", lambda r, q=q: r["answers"][q])[0] > spread(
        "pixel", lambda r, q=q: r["answers"][q])[1], f"the prose says: both codes answer {q} better"
assert not beyond_spread(lambda r: r["answers"]["fill"])
teacher_reads = RESULTS["ceilings"]["originals"]["teacher"]
assert all(teacher_reads["colour"] - r["answers"]["colour"] <= 0.021 for r in variants["both"])
assert all(r["answers"]["background"] > teacher_reads["background"] for r in variants["both"])
assert all(0.02 <= teacher_reads["shape"] - r["answers"]["shape"] <= 0.036 for r in variants["both"])
for judge in ("teacher", "classifier"):
    for a in ("shape", "colour"):
        get = lambda r, j=judge, a=a: r["generation"][j][a]  # noqa: E731
        assert not beyond_spread(get), f"the prose says: the variants' {judge} {a} ranges overlap"
for a in ("shape", "colour"):
    assert not beyond_spread(lambda r, a=a: r["combinations"]["teacher"][a]), "the prose says: the pairs overlap"
assert not beyond_spread(lambda r: r["generation"]["frechet"])
both_gen = {a: spread("both", lambda r, a=a: r["generation"]["teacher"][a]) for a in ("shape", "colour")}
assert 0.28 <= both_gen["shape"][0] and both_gen["shape"][1] <= 0.33 and 0.48 <= both_gen["colour"][0] <= both_gen["colour"][1] <= 0.65
figures.save()  # under DUALTOKEN_LITE_WRITE_FIGURES=1: record this run's figures
