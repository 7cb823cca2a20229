"""The unified model: ONE decoder-only transformer that reads and writes caption words and DualToken images.

Two transformers, as in RQ-Transformer (Lee et al. 2022) and VILA-U's depth transformer (the DualToken paper,
section 3.3, fuses a position's codes the same way):

    main (causal over the sequence, unified/sequences.py)       depth (causal over the S codes of ONE position)
      in  words: word embedding + its slot's position            in  [h_n, e(c_{n,1}), .., e(c_{n,S-1})] + slot pos
          image position n: sum of its code embeddings + grid       e = the same per-code embeddings as x_n's
            (+ the prompt's bag of words, condition_inputs)
          (with ``rotary``: queries and keys turned by grid cell, unified/rotary.py)
          (with ``context_depths``: an image being drawn sums only the first codes of each branch)
      out word slots -> logits over the vocabulary (next word)   out -> its branch's head -> logits over K codes
          <boi>, x_0 .. x_{N-2} -> h_n: context of position n

    p(image | prompt) = prod_n prod_s p(c_{n,s} | prompt, stacks before n, c_{n,<s})
    p(answer | image, marker) = prod_j p(w_j | image, marker, w_<j)

Each position's stack is every code the tokenizer gives it, in model/token_layout.py's order: pixel depths 1..8,
then (variant "both") semantic depths 1..4. Variant "pixel" reads and writes the pixel codes alone; "both" also
the semantic codes, which enter every later position's sum. Only pixel codes are decoded to pixels.

A training step holds both tasks: a text -> image batch (the prompt dropped to the empty one with probability
``prompt_dropout``, which allows classifier-free guidance when sampling) and an image -> text batch (a caption, or
a question about one attribute and its answer). The loss is the image's cross-entropy per code, the first pixel
depth weighted to ``first_depth_share`` of it (``image_loss``), plus the answer's mean cross-entropy per word.
Sampling (both directions, with key/value caches): unified/sampling.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualtoken_lite.model.token_layout import TokenLayout
from dualtoken_lite.settings import ConfigError, require_at_least, require_fraction
from dualtoken_lite.tinyworld.vocabulary import SPECIALS, VOCABULARY
from dualtoken_lite.unified.blocks import Transformer, Turns
from dualtoken_lite.unified.embedding import CodeStackEmbedding, slot_sizes, variant_slots
from dualtoken_lite.unified.rotary import TEXT_CELL, cell_angles, token_cells, turns
from dualtoken_lite.unified.sequences import ANSWER_LENGTH, BOI, IGNORE, PROMPT_LENGTH, TEXT_VOCABULARY

VARIANTS = ("pixel", "both")


@dataclass
class UnifiedConfig:
    """The unified model's size and which codes it reads and writes."""

    variant: str = "both"  # the codes of each image position: "pixel" (all pixel depths) or "both" (+ all semantic)
    width: int = 128  # C, width of both transformers
    layers: int = 4  # blocks of the main transformer
    depth_layers: int = 2  # blocks of the depth transformer (one block: the dual model drew colour worse, docs)
    heads: int = 4  # attention heads (width must be a multiple)
    code_dim: int = 32  # width of each slot's code table (the tokenizer's code dim, to start from its codebooks)
    prompt_dropout: float = 0.1  # P(prompt -> the empty prompt) in text -> image training (classifier-free guidance)
    depth_positions: int = 8  # image positions per image whose deeper codes train the depth transformer each
    #                            step: a random subset (subsample_positions) or all 64 (the exact loss); the first
    #                            pixel depth trains at every position (first_depth_logits)
    first_depth_share: float | None = 0.5  # the first pixel depth's share of the image loss (None: 1/S, its share
    #                                         of the codes, i.e. the plain mean over codes)
    dropout: float = 0.0  # dropout in attention and MLP while training
    context_depths: int | None = None  # text -> image: earlier positions enter the main transformer as the sum of
    #                                     their first this-many codes of each branch (None: the whole stack), so an
    #                                     image is drawn from codes the model relies on, not from its own draws of
    #                                     the detail codes; every code is still written and decoded, and an image
    #                                     read for understanding is embedded whole. Off in the shipped recipe until
    #                                     its round is judged (docs/unified_model.md, its pilot)
    rotary: bool = False  # a 2-D rotary embedding in the main transformer's attention (unified/rotary.py); off in
    #                       the shipped recipe until its three-seed round is judged (docs/unified_model.md, its pilot)

    def validate(self) -> UnifiedConfig:
        """Raise ConfigError naming a bad field; return self."""
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant={self.variant!r}: choose one of {VARIANTS}")
        require_at_least(self, ("width", "layers", "depth_layers", "heads", "code_dim", "depth_positions"), 1,
                         where="model.")
        if self.width % self.heads:
            raise ConfigError(f"model.width={self.width} must be a multiple of model.heads={self.heads}")
        require_fraction(self, ("prompt_dropout", "dropout"), where="model.")
        if self.context_depths is not None:
            require_at_least(self, ("context_depths",), 1, where="model.", note="or null for the whole stack")
        if self.first_depth_share is not None and not 0 < self.first_depth_share < 1:
            raise ConfigError(f"model.first_depth_share={self.first_depth_share} must be in (0, 1), or null for the "
                              "plain mean over codes")
        return self


def subsample_positions(h: Tensor, codes: Tensor, keep: int, rng: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The depth transformer's training positions: the same random ``keep`` of the N positions of each image.

    h (B, N, C), codes (B, N, S) -> (B, keep, C), (B, keep, S). The depth transformer runs S steps per position, so
    it costs S times the main one per image token; training it on an eighth of the positions (an unbiased estimate
    of the full loss) buys several times as many images per second. Every position still trains the main transformer
    through the positions after it.
    """
    B, N = codes.shape[:2]
    if keep >= N:
        return h, codes
    pick = torch.rand(B, N, generator=rng).argsort(1)[:, :keep]  # (B, keep) distinct positions per image
    return (h.gather(1, pick[..., None].expand(-1, -1, h.shape[-1])),
            codes.gather(1, pick[..., None].expand(-1, -1, codes.shape[-1])))


def prompt_words(prompt: Tensor) -> Tensor:
    """Prompt ids (B, P) -> (B, P) bool: the slots holding caption words (not <pad>, <start>, <end> or a marker)."""
    return (prompt >= len(SPECIALS)) & (prompt < len(VOCABULARY))


def condition_inputs(x: Tensor, summary: Tensor) -> Tensor:
    """Add the prompt's summary to every image input: x (B, n, C) + s (B, C) -> (B, n, C).

    With the caption reachable only through attention, a small model trained for minutes learns the images'
    unconditional statistics first (background, paint, blobs) and draws whatever shape and colour it likes
    (docs/unified_model.md measures it). Adding a summary of the prompt to
    every image position (as DiT's and MaskGIT's class conditioning reaches every token) puts the caption in each
    position's residual stream from the first step. The summary is a bag of words: the mean of the caption words'
    condition embeddings, zero for the empty prompt (so the unconditional model of guidance gets nothing added, and
    an image read for understanding, which has no prompt, is embedded as in training).

    Its size matters: the code sum it is added to starts at a norm of about 3.5 (pixel codes) to 10 (pixel +
    semantic), the codebooks' own scale. The condition table therefore starts at std 1 (a summary of ~8 words:
    norm ~4), not at the 0.02 of the word table, whose summary was still 0.2 after 1,600 steps and left the
    caption drowned out (docs/unified_model.md measures both).
    """
    return x + summary[:, None]


class UnifiedModel(nn.Module):
    """Words and image code stacks in one causal sequence (module docstring)."""

    kind = "unified"

    def __init__(self, cfg: UnifiedConfig, layout: TokenLayout):
        super().__init__()
        self.cfg, self.layout = cfg.validate(), layout
        C, N = cfg.width, layout.grid**2
        self.slots = variant_slots(layout, cfg.variant)  # pixel depths, then (both) semantic depths
        self.num_pixel = layout.pixel_depth
        self.sizes = [slot_sizes(layout)[s] for s in self.slots]  # K of each slot
        self.word_embed = nn.Embedding(len(TEXT_VOCABULARY), C)
        self.condition_embed = nn.Embedding(len(TEXT_VOCABULARY), C)  # a caption word's share of the prompt summary
        self.image_embed = CodeStackEmbedding(layout, self.slots, C, cfg.code_dim)
        self.grid_pos = nn.Parameter(torch.randn(N, C) * 0.02)  # (N, C) image position n
        self.prompt_pos = nn.Parameter(torch.randn(PROMPT_LENGTH, C) * 0.02)  # (P, C) prompt slot j
        self.answer_pos = nn.Parameter(torch.randn(ANSWER_LENGTH, C) * 0.02)  # (A, C) answer slot j
        self.main = Transformer(C, cfg.layers, cfg.heads, cfg.dropout)
        depth_in_branch = [s if s < layout.pixel_depth else s - layout.pixel_depth for s in self.slots]
        keep = None if cfg.context_depths is None else torch.tensor(depth_in_branch) < cfg.context_depths
        self.register_buffer("context_slots", keep, persistent=False)  # (S,) bool or None: context_depths
        cells = torch.arange(TEXT_CELL, N + 1)  # every cell a token can stand for: text, 0 .. N (rotary.token_cells)
        cos, sin = turns(cell_angles(cells, layout.grid, C // cfg.heads))  # (N + 2, c) each
        self.register_buffer("cell_cos", cos, persistent=False)
        self.register_buffer("cell_sin", sin, persistent=False)
        self.word_head = nn.Linear(C, len(TEXT_VOCABULARY))
        self.depth_pos = nn.Parameter(torch.randn(len(self.slots), C) * 0.02)  # (S, C)
        self.depth = Transformer(C, cfg.depth_layers, cfg.heads, cfg.dropout)
        self.pixel_head = nn.Linear(C, layout.pixel_codebook_size)
        self.semantic_head = nn.Linear(C, layout.semantic_codebook_size) if cfg.variant == "both" else None
        nn.init.normal_(self.word_embed.weight, std=0.02)
        nn.init.normal_(self.condition_embed.weight, std=1.0)  # the summary's size: condition_inputs

    # ------------------------------------------------------------------------------------- inputs
    def embed_image(self, stacks: Tensor, first: int = 0, context: bool = False) -> Tensor:
        """Stacks (B, n, S_all) of positions first .. first+n-1 -> inputs (B, n, C): code sum + grid position.
        ``context``: the inputs of an image being drawn, the sum over ``context_depths`` only."""
        keep = self.context_slots if context else None
        return self.image_embed(stacks, keep) + self.grid_pos[first : first + stacks.shape[1]]

    def prompt_summary(self, prompt: Tensor) -> Tensor:
        """Prompt ids (B, P) -> (B, C): the mean condition embedding of its words (zeros for the empty prompt)."""
        words = prompt_words(prompt).unsqueeze(-1).float()  # (B, P, 1)
        return (self.condition_embed(prompt) * words).sum(1) / words.sum(1).clamp(min=1)

    def embed_prompt(self, prompt: Tensor) -> Tensor:
        """Prompt ids (B, P) -> inputs (B, P, C)."""
        return self.word_embed(prompt) + self.prompt_pos

    def embed_answer(self, ids: Tensor, first: int = 0) -> Tensor:
        """Answer-block ids (B, a) at slots first .. first+a-1 -> inputs (B, a, C)."""
        return self.word_embed(ids) + self.answer_pos[first : first + ids.shape[1]]

    def turns(self, cells: tuple[Tensor, Tensor]) -> Turns:
        """Query and key cells (T,) each (rotary.token_cells) -> the main transformer's rotary factors (cos, sin),
        (2, 1, 1, T, c) each (queries, keys); None for a model without the rotary embedding."""
        if not self.cfg.rotary:
            return None
        index = torch.stack(cells) - TEXT_CELL  # (2, T)
        return self.cell_cos[index][:, None, None], self.cell_sin[index][:, None, None]

    def boi(self, batch: int) -> Tensor:
        """(B, 1, C) the <boi> token's input."""
        return self.word_embed.weight[BOI].expand(batch, 1, -1)

    # ------------------------------------------------------------------------------------- stages
    def image_contexts(self, prompt: Tensor, stacks: Tensor) -> Tensor:
        """Text -> image: prompt (B, P), stacks (B, N, S_all) -> h (B, N, C), h_n the context that predicts stack n
        (the outputs at <boi>, x_0 .. x_{N-2})."""
        image = condition_inputs(self.embed_image(stacks[:, :-1], context=True), self.prompt_summary(prompt))
        x = torch.cat([self.embed_prompt(prompt), self.boi(len(prompt)), image], 1)
        return self.main(x, self.turns(token_cells(PROMPT_LENGTH, image.shape[1])))[:, PROMPT_LENGTH:]  # (B, N, C)

    def answer_logits(self, stacks: Tensor, answer: Tensor) -> Tensor:
        """Image -> text: stacks (B, N, S_all), answer-block inputs (B, A) -> next-word logits (B, A, V)."""
        x = torch.cat([self.boi(len(stacks)), self.embed_image(stacks), self.embed_answer(answer)], 1)
        turned = self.turns(token_cells(0, stacks.shape[1], words_after=answer.shape[1]))
        return self.word_head(self.main(x, turned)[:, 1 + stacks.shape[1]:])

    def forward_depth(self, h: Tensor, codes: Tensor) -> Tensor:
        """Contexts h (M, C), the first j codes of each stack (M, j) -> outputs for slots 0..j (M, j + 1, C)."""
        M, j = codes.shape
        e = self.image_embed.per_slot(codes[:, None])[:, 0] if j else h.new_zeros(M, 0, h.shape[1])  # (M, j, C)
        x = torch.cat([h[:, None], e], 1)  # (M, j + 1, C)
        return self.depth(x + self.depth_pos[: x.shape[1]])

    def slot_logits(self, out: Tensor, first_slot: int = 0) -> list[Tensor]:
        """Depth outputs (M, s, C) for slots first_slot.. -> per slot logits over its own codebook, (M, K_s) each."""
        return [(self.pixel_head if first_slot + j < self.num_pixel else self.semantic_head)(out[:, j])
                for j in range(out.shape[1])]

    # ------------------------------------------------------------------------------------- losses
    def first_depth_logits(self, h: Tensor) -> Tensor:
        """Contexts h (..., C) -> logits of the first pixel depth (..., K). The depth transformer is causal over a
        stack, so its first output sees h alone: one token per position, cheap enough for every position."""
        x = (h + self.depth_pos[0]).reshape(-1, 1, h.shape[-1])  # (M, 1, C)
        return self.pixel_head(self.depth(x)[:, 0]).reshape(*h.shape[:-1], -1)

    def image_loss(self, prompt: Tensor, stacks: Tensor, rng: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """Next-code cross-entropy of an image given its prompt; prompt (B, P), stacks (B, N, S_all).

        The first pixel depth is scored at every position (``first_depth_logits``): it decides most of what a
        decoded image shows (the teacher reads shape and colour from first-depth reconstructions alone 82 and 66 % of
        the time, docs/unified_model.md), and the caption is learnt from the few positions where the shape begins,
        which a random subset of positions mostly misses. The deeper
        codes are scored on ``depth_positions`` random positions per image while training, on all at evaluation.
        The loss is the mean over codes, or, with ``first_depth_share`` set, the first depth's mean weighted to
        that share of it. Returns the loss and its parts: "first" (first pixel depth), "pixel" (the deeper pixel
        depths) and "semantic"."""
        S, D = len(self.slots), self.num_pixel
        h = self.image_contexts(prompt, stacks)  # (B, N, C)
        codes = self.image_embed.local_codes(stacks)  # (B, N, S) codes within each slot's codebook
        parts = {"first": F.cross_entropy(self.first_depth_logits(h).flatten(0, 1), codes[..., 0].flatten())}
        if self.training:
            h, codes = subsample_positions(h, codes, self.cfg.depth_positions, rng)
        out = self.forward_depth(h.flatten(0, 1), codes.flatten(0, 1)[:, :-1])  # (B n, S, C)
        flat = codes.flatten(0, 1)  # (B n, S)
        if D > 1:
            parts["pixel"] = F.cross_entropy(self.pixel_head(out[:, 1:D]).flatten(0, 1), flat[:, 1:D].flatten())
        if self.semantic_head is not None:
            parts["semantic"] = F.cross_entropy(self.semantic_head(out[:, D:]).flatten(0, 1), flat[:, D:].flatten())
        if S == 1:
            return parts["first"], parts
        share = self.cfg.first_depth_share or 1 / S
        counts = {"pixel": D - 1, "semantic": S - D}
        rest = sum(counts[k] * parts[k] for k in counts if k in parts) / (S - 1)  # mean over the other codes
        return share * parts["first"] + (1 - share) * rest, parts

    def text_loss(self, stacks: Tensor, answer: Tensor, targets: Tensor) -> Tensor:
        """Mean next-word cross-entropy over the scored answer slots; targets (B, A) with IGNORE elsewhere."""
        logits = self.answer_logits(stacks, answer)  # (B, A, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

    def loss(self, batch: dict, rng: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """One training step's loss on both tasks (``batch``: unified/trainer.make_batch)."""
        image, parts = self.image_loss(batch["prompt"], batch["image_stacks"], rng)
        text = self.text_loss(batch["text_stacks"], batch["answer"], batch["targets"])
        loss = image + text
        return loss, {"loss": loss.detach(), "loss_image": image.detach(), "loss_text": text.detach(),
                      **{f"loss_{k}": v.detach() for k, v in parts.items()}}
