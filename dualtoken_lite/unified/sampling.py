"""Sampling the unified model in both directions, with key/value caches.

    stacks = draw_stacks(model, prompt_block(["a red star"] * 4), SamplingConfig(), rng)   # (4, N, S) layout ids
    ids = write_answers(model, stacks, torch.full((4,), CAPTION))                          # 4 lists of word ids

Text -> image: the prompt and <boi> fill the main transformer's cache in one pass; then for each position n the
output h_n starts the depth transformer, which draws the S codes of position n one after another, each from its own
slot's codebook only (so every id is valid for its slot); their embeddings' sum (plus the prompt's summary,
unified/model.condition_inputs) is the next input of the main transformer. Classifier-free guidance (Ho & Salimans 2022) runs the same steps on the empty prompt beside each
prompt and mixes the two sets of logits, u + s (c - u): s = 1 is the plain conditional model, s > 1 follows the
prompt harder at some cost in variety.

Image -> text: <boi>, the image's stacks and the marker fill the cache in one pass; then words are read off one at
a time, greedily by default (temperature 0), until <end> or the answer block is full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dualtoken_lite.settings import ConfigError
from dualtoken_lite.tinyworld.vocabulary import END, PAD
from dualtoken_lite.unified.model import condition_inputs
from dualtoken_lite.unified.rotary import token_cells
from dualtoken_lite.unified.sequences import ANSWER_LENGTH, prompt_block


@dataclass
class SamplingConfig:
    """How image codes are drawn (the defaults: chosen on the captions of eval images 512-767, docs/unified_model.md)."""

    temperature: float = 1.0  # logits / temperature before the softmax (0 = always the most likely code)
    top_k: int | None = None  # keep only the k most likely codes of each slot (None = all)
    guidance: float = 4.0  # classifier-free guidance scale (1 = the plain conditional model)
    seed: int = 0  # seeds the sampler's generator: the same seed gives the same images
    batch_size: int = 128  # images sampled together

    def validate(self) -> SamplingConfig:
        """Raise ConfigError naming a bad field; return self."""
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ConfigError(f"temperature={self.temperature} must be a finite number >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be >= 1 (or None for all codes)")
        if not (self.guidance >= 0 and np.isfinite(self.guidance)):
            raise ConfigError(f"guidance={self.guidance} must be a finite number >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        return self


def sample_logits(logits: Tensor, temperature: float, top_k: int | None, rng: torch.Generator | None) -> Tensor:
    """Temperature + top-k sampling: logits (B, K) -> one index per row (B,); temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=rng)[:, 0]


def guide(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: u + s (c - u); s = 1 is the conditional model itself."""
    return unconditional + scale * (conditional - unconditional)


@torch.no_grad()
def draw_position(model, h: Tensor, sampling: SamplingConfig, guided: bool, rng) -> Tensor:
    """One position's stack: contexts h (M, C) (the unconditional half last when ``guided``) -> codes (B, S) within
    each slot's codebook, drawn slot after slot by the depth transformer."""
    B = h.shape[0] // 2 if guided else h.shape[0]
    cache = model.depth.new_cache()
    x = (h + model.depth_pos[0])[:, None]  # (M, 1, C)
    codes = []
    for j in range(len(model.slots)):
        logits = model.slot_logits(model.depth.step(x, cache), j)[0]  # (M, K_j)
        if guided:
            logits = guide(logits[:B], logits[B:], sampling.guidance)
        codes.append(sample_logits(logits, sampling.temperature, sampling.top_k, rng))  # (B,)
        if j + 1 < len(model.slots):
            e = model.image_embed.per_slot(torch.stack(codes, 1)[:, None])[:, 0, j]  # (B, C) slot j's embedding
            x = ((e.repeat(2, 1) if guided else e) + model.depth_pos[j + 1])[:, None]  # (M, 1, C)
    return torch.stack(codes, 1)


@torch.no_grad()
def draw_stacks(model, prompt: Tensor, sampling: SamplingConfig, rng: torch.Generator | None = None) -> Tensor:
    """Prompts (B, P) -> image stacks (B, N, S) of layout ids of the model's slots, position by position."""
    sampling.validate()
    model.eval()
    B, N = prompt.shape[0], model.layout.grid**2
    guided = sampling.guidance != 1.0
    prompts = torch.cat([prompt, prompt_block([[]] * B)]) if guided else prompt  # (M, P): + the empty prompts
    cache = model.main.new_cache()
    summary = model.prompt_summary(prompts)  # (M, C) added to every image input (model.condition_inputs)
    x = torch.cat([model.embed_prompt(prompts), model.boi(len(prompts))], 1)  # (M, P + 1, C)
    h = model.main.step(x, cache, model.turns(token_cells(prompts.shape[1], 0)))[:, -1]  # (M, C): position 0's context
    out = torch.zeros(B, N, len(model.slots), dtype=torch.long)
    for n in range(N):
        codes = draw_position(model, h, sampling, guided, rng)  # (B, S) within each codebook
        out[:, n] = codes + model.image_embed.offset
        if n + 1 < N:
            stack = out[:, n : n + 1]  # (B, 1, S) layout ids of the model's slots
            x = model.embed_image(full_stack(model, stack), n, context=True)  # (B, 1, C)
            x = condition_inputs(x.repeat(2, 1, 1) if guided else x, summary)  # (M, 1, C)
            h = model.main.step(x, cache, model.turns(token_cells(0, 1, first=n, boi=False)))[:, -1]
    return out


def full_stack(model, stacks: Tensor) -> Tensor:
    """Stacks of the model's slots (B, n, S) -> stacks in the tokenizer's full layout (B, n, S_all), the slots the
    model does not read left at 0 (``CodeStackEmbedding`` only reads the model's own slots)."""
    S_all = model.layout.pixel_depth + model.layout.semantic_depth
    out = torch.zeros(*stacks.shape[:2], S_all, dtype=torch.long)
    out[..., model.slots] = stacks
    return out


@torch.no_grad()
def write_answers(model, stacks: Tensor, markers: Tensor, temperature: float = 0.0,
                  rng: torch.Generator | None = None) -> list[list[int]]:
    """Images (B, N, S_all) layout ids and markers (B,) (<caption> or a question) -> each answer's word ids."""
    model.eval()
    B = stacks.shape[0]
    cache = model.main.new_cache()
    x = torch.cat([model.boi(B), model.embed_image(stacks), model.embed_answer(markers[:, None])], 1)
    prefix = model.turns(token_cells(0, stacks.shape[1], words_after=1))
    logits = model.word_head(model.main.step(x, cache, prefix)[:, -1])  # (B, V): the first word
    word_turns = model.turns(token_cells(1, 0, boi=False))  # every later word sits at the text cell: the same factors
    words, done = [], torch.zeros(B, dtype=torch.bool)
    for slot in range(1, ANSWER_LENGTH):
        word = sample_logits(logits, temperature, None, rng)  # (B,)
        word = torch.where(done, torch.full_like(word, PAD), word)
        words.append(word)
        done |= word == END
        if bool(done.all()) or slot + 1 == ANSWER_LENGTH:
            break
        x = model.embed_answer(word[:, None], slot)  # (B, 1, C)
        logits = model.word_head(model.main.step(x, cache, word_turns)[:, -1])
    ids = torch.stack(words, 1).tolist()  # (B, t)
    return [row[: row.index(END)] if END in row else [i for i in row if i != PAD] for row in ids]
