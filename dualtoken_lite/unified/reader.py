"""The understanding model: a small transformer that reads an image's tokens plus a question token and answers.

    reader = Reader(ReaderConfig(variant="both"), layout)
    logits = reader(stacks)            # stacks (B, N, S_all) layout ids -> (B, Q, NUM_ANSWERS), all Q questions

The image enters as N = H x W vectors, each the sum of the position's code embeddings (unified/embedding.py; the
variant decides which codes: semantic, pixel or both), plus a learned position embedding. The Q question tokens
follow. One forward answers every question at once, and is *exactly* Q separate forwards of image + one question:

    mask (N + Q) x (N + Q), True = may attend
        image rows     -> image columns only (the image never sees a question)
        question row q -> image columns and itself (never another question)

The output at question q goes through a linear head to the shared answer vocabulary (unified/questions.py).
The three readers of the experiment differ only in ``variant``: same width, depth, steps and batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualtoken_lite.model.token_layout import TokenLayout
from dualtoken_lite.settings import ConfigError, require_at_least
from dualtoken_lite.unified.blocks import Transformer
from dualtoken_lite.unified.embedding import VARIANTS, CodeStackEmbedding
from dualtoken_lite.unified.questions import NUM_ANSWERS, QUESTION_NAMES


@dataclass
class ReaderConfig:
    """A reader's size and which tokens it reads."""

    variant: str = "both"  # which codes of each position it reads: "semantic", "pixel" or "both"
    width: int = 96  # C, the transformer's width
    layers: int = 3  # transformer blocks
    heads: int = 4  # attention heads (width must be a multiple)
    code_dim: int = 32  # width of each slot's code table (the tokenizer's code dim, to start from its codebooks)
    dropout: float = 0.1  # dropout in attention and MLP while training

    def validate(self) -> ReaderConfig:
        """Raise ConfigError naming a bad field; return self."""
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant={self.variant!r}: choose one of {VARIANTS}")
        require_at_least(self, ("width", "layers", "heads", "code_dim"), 1, where="model.")
        if self.width % self.heads:
            raise ConfigError(f"model.width={self.width} must be a multiple of model.heads={self.heads}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        return self


def question_mask(positions: int, questions: int) -> Tensor:
    """(N + Q, N + Q) bool attention mask, True = may attend (module docstring)."""
    T = positions + questions
    mask = torch.zeros(T, T, dtype=torch.bool)
    mask[:, :positions] = True  # everyone sees the image
    mask[positions:, positions:] = torch.eye(questions, dtype=torch.bool)  # a question sees itself only
    return mask


class Reader(nn.Module):
    """Image tokens + question tokens -> answer logits (module docstring)."""

    kind = "reader"

    def __init__(self, cfg: ReaderConfig, layout: TokenLayout):
        super().__init__()
        self.cfg, self.layout = cfg.validate(), layout
        N = layout.grid**2
        self.embed = CodeStackEmbedding(layout, cfg.variant, cfg.width, cfg.code_dim)
        self.pos = nn.Parameter(torch.randn(N, cfg.width) * 0.02)  # (N, C) learned position embedding
        self.question = nn.Embedding(len(QUESTION_NAMES), cfg.width)  # one token per question type
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.dropout)
        self.head = nn.Linear(cfg.width, NUM_ANSWERS)

    def forward(self, stacks: Tensor, questions: list[int] | None = None) -> Tensor:
        """stacks (B, N, S_all) layout ids -> logits (B, Q', NUM_ANSWERS) for ``questions`` (default: all Q)."""
        questions = list(range(len(QUESTION_NAMES))) if questions is None else questions
        B, N = stacks.shape[:2]
        image = self.embed(stacks) + self.pos  # (B, N, C)
        asked = self.question.weight[questions].expand(B, -1, -1)  # (B, Q', C)
        mask = question_mask(N, len(questions)).to(stacks.device)  # (N + Q', N + Q')
        out = self.transformer(torch.cat([image, asked], 1), mask=mask)  # (B, N + Q', C)
        return self.head(out[:, N:])  # (B, Q', NUM_ANSWERS)

    def loss(self, stacks: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
        """Cross-entropy averaged over images and questions; labels (B, Q) answer ids."""
        logits = self(stacks)  # (B, Q, A)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy}
