"""The generation model: class-conditional autoregression over the 8 x 8 grid, one stack of codes per position.

Two transformers, as in RQ-Transformer (Lee et al. 2022) and VILA-U's depth transformer:

    spatial (causal over positions, raster order)        depth (causal over the S codes of ONE position)
      in  [class, x_0, .., x_{N-2}] + pos                  in  [h_n, e(c_n,1), .., e(c_n,S-1)] + slot pos
          x_n = sum of position n's code embeddings            e = the same per-slot embeddings as x_n's
      out h_n (B, N, C): the context of position n          out -> head of the slot's branch -> logits over K

    p(image | class) = prod_n prod_s p(c_{n,s} | class, stacks before n, c_{n,<s})

The stack is predicted in model/token_layout.py's order: pixel depths 1..d_pix, then (variant "both") semantic
depths 1..d_sem, the first depths of each residual stack (``modelled_slots``: coarse to fine, the decoder reads
the partial sum). Variant "pixel" models the pixel codes alone; "both" also the semantic codes, which enter the
next positions' sums, the paper's way of fusing the two token types per position. Only pixel codes are decoded.

The spatial transformer's attention carries a 2-D rotary embedding (``rotary``, unified/rotary.py): a query
scores each earlier position by its grid offset, so "the cell above" means the same at every position, which
a raster-order model otherwise has to learn separately for every row (docs/unified_model.md has its measured
effect on the held-out loss).

Each slot's logits cover exactly its own codebook, so sampling can only emit ids valid for that position and
depth. The class token is dropped to a learned "no class" token with probability ``class_dropout`` while
training, which allows classifier-free guidance when sampling (``guidance`` > 1; 1 = plain conditional).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualtoken_lite.model.token_layout import TokenLayout
from dualtoken_lite.settings import ConfigError, require_at_least, require_fraction
from dualtoken_lite.tinyworld.drawing import CLASSES
from dualtoken_lite.unified.blocks import Transformer
from dualtoken_lite.unified.embedding import CodeStackEmbedding, slot_sizes, variant_slots
from dualtoken_lite.unified.rotary import generator_angles

GENERATOR_VARIANTS = ("pixel", "both")


@dataclass
class GeneratorConfig:
    """A generator's size and which codes it models."""

    variant: str = "both"  # the codes of each position it models: "pixel" or "both" (pixel + semantic)
    width: int = 128  # C, width of both transformers
    spatial_layers: int = 4  # blocks of the spatial transformer
    depth_layers: int = 1  # blocks of the depth transformer
    heads: int = 4  # attention heads (width must be a multiple)
    code_dim: int = 32  # width of each slot's code table (the tokenizer's code dim, to start from its codebooks)
    num_classes: int = len(CLASSES)  # prompts: the tiny world's shape classes
    class_dropout: float = 0.1  # P(class -> "no class") while training (classifier-free guidance)
    pixel_depths: int = 1  # pixel depths modelled, 1..pixel_depths (coarse to fine; the decoder reads their sum)
    semantic_depths: int = 1  # semantic depths modelled with variant "both", 1..semantic_depths
    depth_positions: int = 64  # grid positions per image whose stacks train the depth transformer each step: all
    #                            of them (the exact loss), or a random subset of that size (subsample_positions)
    dropout: float = 0.0  # dropout in attention and MLP while training
    class_everywhere: bool = True  # also add the class embedding to every position's input (condition_inputs)
    rotary: bool = True  # 2-D rotary embedding in the spatial transformer's attention (unified/rotary.py)

    def validate(self) -> GeneratorConfig:
        """Raise ConfigError naming a bad field; return self."""
        if self.variant not in GENERATOR_VARIANTS:
            raise ConfigError(f"model.variant={self.variant!r}: choose one of {GENERATOR_VARIANTS}")
        require_at_least(self, ("width", "spatial_layers", "depth_layers", "heads", "code_dim", "num_classes",
                                "depth_positions", "pixel_depths", "semantic_depths"), 1, where="model.")
        if self.width % self.heads:
            raise ConfigError(f"model.width={self.width} must be a multiple of model.heads={self.heads}")
        if self.rotary and (self.width // self.heads) % 4:
            raise ConfigError(f"model.rotary needs model.width / model.heads ({self.width // self.heads}) divisible by 4")
        require_fraction(self, ("class_dropout", "dropout"), where="model.")
        return self


def modelled_slots(layout: TokenLayout, cfg: GeneratorConfig) -> list[int]:
    """The stack slots a generator models: pixel depths 1..pixel_depths, then (variant "both") semantic 1..semantic_depths.

    Truncating the residual stack is coarse-to-fine modelling (RQ-VAE): the first depths hold the structure (the
    shipped tokenizer decodes 22.6 / 27.8 / 29.7 dB from the first 1 / 2 / 3 pixel depths, 30.9 dB from all 8), the
    last ones fine texture that costs a CPU-sized model most of its capacity.
    """
    if cfg.pixel_depths > layout.pixel_depth or cfg.semantic_depths > layout.semantic_depth:
        raise ConfigError(f"model.pixel_depths={cfg.pixel_depths} / model.semantic_depths={cfg.semantic_depths} exceed "
                          f"the tokenizer's depths {layout.pixel_depth} / {layout.semantic_depth}")
    semantic = list(range(layout.pixel_depth, layout.pixel_depth + cfg.semantic_depths))
    return variant_slots(layout, "pixel")[: cfg.pixel_depths] + (semantic if cfg.variant == "both" else [])


def sample_logits(logits: Tensor, temperature: float, top_k: int | None, rng: torch.Generator | None
                  ) -> Tensor:
    """Temperature + top-k sampling: logits (B, K) -> one index per row (B,); temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=rng)[:, 0]


def subsample_positions(h: Tensor, codes: Tensor, keep: int, rng: torch.Generator | None
                        ) -> tuple[Tensor, Tensor]:
    """Position subsampling for the depth transformer: the same random ``keep`` of the N positions of each image.

    h (B, N, C), codes (B, N, S) -> (B, keep, C), (B, keep, S). The depth transformer runs S steps per position,
    so it costs S times the spatial one; training it on a quarter of the positions (an unbiased estimate of the
    full loss) buys four times as many images per second. Every position still gets the spatial gradient of the
    positions after it through attention.
    """
    B, N = codes.shape[:2]
    if keep >= N:
        return h, codes
    pick = torch.rand(B, N, generator=rng).argsort(1)[:, :keep]  # (B, keep) distinct positions per image
    return h.gather(1, pick[..., None].expand(-1, -1, h.shape[-1])), codes.gather(1, pick[..., None].expand(
        -1, -1, codes.shape[-1]))


def condition_inputs(x: Tensor, class_vectors: Tensor) -> Tensor:
    """Add the class embedding to every input of the spatial transformer: x (B, n, C) + c (B, C) -> (B, n, C).

    With the class only at input 0, every position must find it through attention, which a small model trained
    for minutes learns late: its samples follow the data's unconditional statistics (background, paint) and draw
    shapes of any class. Adding it to every input (as DiT's and MaskGIT's class conditioning reaches every token)
    puts the prompt in each position's residual stream from the first step.
    """
    return x + class_vectors[:, None]


def guide(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: u + s (c - u); s = 1 is the conditional model itself."""
    return unconditional + scale * (conditional - unconditional)


class ARGenerator(nn.Module):
    """Class -> a grid of code stacks (module docstring)."""

    kind = "generator"

    def __init__(self, cfg: GeneratorConfig, layout: TokenLayout):
        super().__init__()
        self.cfg, self.layout = cfg.validate(), layout
        C, N = cfg.width, layout.grid**2
        self.slots = modelled_slots(layout, cfg)
        self.num_pixel = cfg.pixel_depths
        self.sizes = [slot_sizes(layout)[s] for s in self.slots]  # K of each modelled slot
        self.embed = CodeStackEmbedding(layout, self.slots, C, cfg.code_dim)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, C)  # the last row is "no class"
        self.spatial_pos = nn.Parameter(torch.randn(N, C) * 0.02)  # (N, C)
        self.spatial = Transformer(C, cfg.spatial_layers, cfg.heads, cfg.dropout)
        query, key = generator_angles(layout.grid, C // cfg.heads) if cfg.rotary else (torch.empty(0), torch.empty(0))
        self.register_buffer("query_angles", query, persistent=False)  # (N, c/2), empty without model.rotary
        self.register_buffer("key_angles", key, persistent=False)
        self.depth_pos = nn.Parameter(torch.randn(len(self.slots), C) * 0.02)  # (S, C)
        self.depth = Transformer(C, cfg.depth_layers, cfg.heads, cfg.dropout)
        self.pixel_head = nn.Linear(C, layout.pixel_codebook_size)
        self.semantic_head = nn.Linear(C, layout.semantic_codebook_size) if len(self.slots) > self.num_pixel else None

    # ------------------------------------------------------------------------------------- stages
    def forward_spatial(self, stacks: Tensor, classes: Tensor) -> Tensor:
        """Stacks of positions 0..n-1 (B, n, S_all), classes (B,) -> contexts h_0..h_n (B, n + 1, C)."""
        c = self.class_embed(classes)  # (B, C)
        x = torch.cat([c[:, None], self.embed(stacks)], 1)  # (B, n + 1, C)
        if self.cfg.class_everywhere:
            x = torch.cat([x[:, :1], condition_inputs(x[:, 1:], c)], 1)
        return self.spatial(x + self.spatial_pos[: x.shape[1]], causal=True, angles=self.angles())

    def angles(self, index: int | None = None):
        """The spatial transformer's rotary angles (all inputs, or input ``index`` only); None without model.rotary."""
        if not self.cfg.rotary:
            return None
        if index is None:
            return self.query_angles, self.key_angles
        return self.query_angles[index : index + 1], self.key_angles[index : index + 1]

    def forward_depth(self, h: Tensor, codes: Tensor) -> Tensor:
        """Contexts h (M, C), the first j codes of each stack (M, j) -> outputs for slots 0..j (M, j + 1, C)."""
        M, j = codes.shape
        e = self.embed.per_slot(codes[:, None])[:, 0] if j else h.new_zeros(M, 0, h.shape[1])  # (M, j, C)
        x = torch.cat([h[:, None], e], 1)  # (M, j + 1, C)
        return self.depth(x + self.depth_pos[: x.shape[1]], causal=True)

    def slot_logits(self, out: Tensor, first_slot: int = 0) -> list[Tensor]:
        """Depth outputs (M, s, C) for slots first_slot.. -> per slot logits over its own codebook, (M, K_s) each."""
        return [(self.pixel_head if first_slot + j < self.num_pixel else self.semantic_head)(out[:, j])
                for j in range(out.shape[1])]

    # ------------------------------------------------------------------------------------- training
    def loss(self, stacks: Tensor, classes: Tensor, rng: torch.Generator | None = None
             ) -> tuple[Tensor, dict]:
        """Next-code cross-entropy over every modelled slot of every position; stacks (B, N, S_all), classes (B,)."""
        B, N = stacks.shape[:2]
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(B, generator=rng) < self.cfg.class_dropout
            classes = torch.where(drop, torch.full_like(classes, self.cfg.num_classes), classes)
        h = self.forward_spatial(stacks[:, :-1], classes)  # (B, N, C): h_n sees positions < n
        codes = self.embed.local_codes(stacks)  # (B, N, S) codes within each slot's codebook
        if self.training:
            h, codes = subsample_positions(h, codes, self.cfg.depth_positions, rng)  # (B, n', C), (B, n', S)
        out = self.forward_depth(h.flatten(0, 1), codes.flatten(0, 1)[:, :-1])  # (B N, S, C)
        pix = self.pixel_head(out[:, : self.num_pixel])  # (B N, D_pix, K_pix)
        losses = {"pixel": F.cross_entropy(pix.flatten(0, 1), codes.flatten(0, 1)[:, : self.num_pixel].flatten())}
        if self.semantic_head is not None:
            sem = self.semantic_head(out[:, self.num_pixel :])  # (B N, D_sem, K_sem)
            losses["semantic"] = F.cross_entropy(sem.flatten(0, 1),
                                                 codes.flatten(0, 1)[:, self.num_pixel :].flatten())
        weights = {"pixel": self.num_pixel, "semantic": len(self.slots) - self.num_pixel}
        loss = sum(weights[k] * v for k, v in losses.items()) / len(self.slots)  # mean over all modelled codes
        return loss, {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in losses.items()}}

    # ------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, classes: Tensor, temperature: float = 1.0, top_k: int | None = None, guidance: float = 1.0,
               rng: torch.Generator | None = None) -> Tensor:
        """classes (B,) -> stacks (B, N, S) of layout ids of the modelled slots, position by position, code by code.

        Both transformers decode with key/value caches (blocks.Transformer.step). Deterministic for a seeded
        ``rng``. Each code is drawn from its own slot's codebook only.
        """
        B, N, S = classes.shape[0], self.layout.grid**2, len(self.slots)
        guided = guidance != 1.0
        cls = torch.cat([classes, torch.full_like(classes, self.cfg.num_classes)]) if guided else classes
        out = torch.zeros(B, N, S, dtype=torch.long, device=classes.device)  # (B, N, S) layout ids
        spatial_cache = self.spatial.new_cache()
        c = self.class_embed(cls)  # (M, C)
        x = c[:, None] + self.spatial_pos[:1]  # (M, 1, C): the class token at input 0
        for n in range(N):
            h = self.spatial.step(x, spatial_cache, self.angles(n))[:, 0]  # (M, C) context of position n
            depth_cache = self.depth.new_cache()
            d_in = (h + self.depth_pos[0])[:, None]  # (M, 1, C)
            codes = []
            for j in range(S):
                logits = self.slot_logits(self.depth.step(d_in, depth_cache), j)[0]  # (M, K_j)
                if guided:
                    logits = guide(logits[:B], logits[B:], guidance)
                code = sample_logits(logits, temperature, top_k, rng)  # (B,)
                out[:, n, j] = code + self.embed.offset[j]
                codes.append(code.repeat(2) if guided else code)
                if j + 1 < S:
                    e = self.embed.per_slot(torch.stack(codes, 1)[:, None])[:, 0, j]  # (M, C) slot j's embedding
                    d_in = (e + self.depth_pos[j + 1])[:, None]
            if n + 1 < N:
                stack = self.embed.per_slot(torch.stack(codes, 1)[:, None])[:, 0].sum(1)  # (M, C) position n's sum
                x = (stack + self.spatial_pos[n + 1])[:, None]  # (M, 1, C): input n + 1
                if self.cfg.class_everywhere:
                    x = condition_inputs(x, c)
        return out
