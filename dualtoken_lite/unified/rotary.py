"""2-D rotary position embedding for the main transformer: attention that reads grid offsets between image cells.

A learned position table (``UnifiedModel.grid_pos``) has to learn "the cell above me" once for each of the 64 grid
positions. Rotary embeddings (RoFormer, Su et al. 2021; in 2-D as in LlamaGen's image generator) turn each query
and key by angles proportional to its grid coordinates, so a query-key score depends on the *offset* between them:
what the model learns about looking one row up holds at every position.

    head channels c = 4 m:  pair i is channels (i, i + 2 m); pairs 0..m-1 turn with the row, m..2m-1 with the
                            column, frequencies theta_i = base^(-i / m), i = 0..m-1 (the same for rows and columns)
    rotate(x, cos, sin)     each pair turned by its angle: x cos + roll(x, 2 m) sin, with the sines of the first
                            half negated (``turns``): (x_i, x_i+2m) -> (x_i cos - x_i+2m sin, x_i+2m cos + x_i sin)

Which cell a token stands for (``token_cells``; unified/sequences.py has the layouts): the input that holds image
position n's codes is a key at cell n, but its output predicts cell n + 1, so its query is turned by cell n + 1
(and <boi>'s query by cell 0, the cell it predicts). A score then depends on how far the held cell lies from the
predicted one, e.g. (-1, 0) for the cell straight above. Words, markers and <boi>'s key sit at TEXT_CELL, one
place before the grid: turned by (-1, -1), so an image query reads them by a fixed offset from its own cell, and
words among themselves (all at the same place) are not turned relative to each other; their order comes from the
learned slot positions. An image read for understanding is embedded exactly as in generation: same cells.
"""

from __future__ import annotations

import torch
from torch import Tensor

TEXT_CELL = -1  # the cell of every word and marker token, and of <boi>'s key: (-1, -1), before the grid


def grid_angles(rows: Tensor, cols: Tensor, head_dim: int, base: float = 64.0) -> Tensor:
    """Coordinates rows, cols (T,) -> the angle of each channel pair (T, head_dim / 2): rows first, then columns."""
    if head_dim % 4:
        raise ValueError(f"the 2-D rotary embedding needs a head dimension divisible by 4, got {head_dim}")
    m = head_dim // 4
    theta = base ** (-torch.arange(m, dtype=torch.float32) / m)  # (m,)
    return torch.cat([rows.float()[:, None] * theta, cols.float()[:, None] * theta], 1)  # (T, 2 m)


def cell_angles(cells: Tensor, grid: int, head_dim: int) -> Tensor:
    """Cells (T,) (n = row n // grid, column n % grid; TEXT_CELL = (-1, -1)) -> angles (T, head_dim / 2)."""
    text = cells == TEXT_CELL
    rows = torch.where(text, torch.full_like(cells, -1), cells // grid)
    cols = torch.where(text, torch.full_like(cells, -1), cells % grid)
    return grid_angles(rows, cols, head_dim)


def turns(angles: Tensor) -> tuple[Tensor, Tensor]:
    """Angles (T, c / 2) -> the factors ``rotate`` multiplies by: cos (T, c) and sin (T, c), the first half's sines
    negated. Computed once per sequence layout, not per block."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Turn each channel pair (i, i + c / 2) of x (..., T, c) by its angle (factors from ``turns``, broadcast
    against x); returns x's shape. Three elementwise operations and a roll, no strided copies."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 under autocast: q, k and v keep one dtype
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


def token_cells(words_before: int, image: int, first: int = 0, words_after: int = 0,
                boi: bool = True) -> tuple[Tensor, Tensor]:
    """The query and key cells (T,) each of a stretch of the sequence: ``words_before`` word slots, <boi> (if
    ``boi``), the inputs holding image positions first .. first + image - 1, then ``words_after`` word slots.

    text -> image: token_cells(P, N - 1) (prompt, <boi>, x_0 .. x_{N-2}); image -> text: token_cells(0, N,
    words_after=A); one sampling step of position n: token_cells(0, 1, first=n, boi=False).
    """
    text = torch.full((words_before,), TEXT_CELL)
    held = torch.arange(first, first + image)  # (image,) the cell whose codes each input holds
    after = torch.full((words_after,), TEXT_CELL)
    boi_q, boi_k = (torch.tensor([0]), torch.tensor([TEXT_CELL])) if boi else (torch.zeros(0, dtype=torch.long),) * 2
    return torch.cat([text, boi_q, held + 1, after]), torch.cat([text, boi_k, held, after])
