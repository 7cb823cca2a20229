"""2-D rotary position embedding for the generator's spatial transformer: attention that reads grid offsets.

A learned absolute position table has to learn "the cell above me" once for each of the 64 positions. Rotary
embeddings (RoFormer, Su et al. 2021; in 2-D as in LlamaGen's image generator) rotate each query and key by angles
proportional to its grid coordinates, so a query-key score depends on the *offset* between them: what the model
learns about looking one row up holds at every position.

    head channels c = 4 m:  pairs 0..m-1 turn with the row, pairs m..2m-1 with the column, frequencies
                            theta_i = base^(-i / m), i = 0..m-1 (the same for rows and columns)
    rotate(x, angle)        each channel pair (x_2i, x_2i+1) turned by its angle

In the spatial transformer the query at input t predicts cell t, while the key at input t holds cell t-1's codes
(input 0, the class token, sits at (-1, -1), before the grid). So queries are turned by the cell they predict and
keys by the cell they hold (``generator_angles``): the score between them depends on how far the held cell lies
from the predicted one, e.g. (-1, 0) for the cell straight above.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_angles(rows: Tensor, cols: Tensor, head_dim: int, base: float = 64.0) -> Tensor:
    """Coordinates rows, cols (T,) -> the angle of each channel pair (T, head_dim / 2): rows first, then columns."""
    if head_dim % 4:
        raise ValueError(f"2-D rotary embedding needs a head dimension divisible by 4, got {head_dim}")
    m = head_dim // 4
    theta = base ** (-torch.arange(m, dtype=torch.float32) / m)  # (m,)
    return torch.cat([rows.float()[:, None] * theta, cols.float()[:, None] * theta], 1)  # (T, 2m)


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """Turn each channel pair of x (..., T, c) by angles (T, c / 2); returns x's shape and dtype."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (T, c/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, c/2) each
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


def generator_angles(grid: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """Query and key angles (grid^2, head_dim / 2) each, for the spatial transformer's inputs 0..grid^2-1.

    Query t is turned by cell t (the cell it predicts); key t by cell t-1 (the cell whose codes it holds), key 0
    (the class token) by (-1, -1).
    """
    cells = torch.arange(grid * grid)
    query = grid_angles(cells // grid, cells % grid, head_dim)
    held = torch.cat([torch.tensor([-1]), cells[:-1]])  # (N,) the cell each input holds, -1 = the class token
    rows = torch.where(held >= 0, held // grid, torch.full_like(held, -1))
    cols = torch.where(held >= 0, held % grid, torch.full_like(held, -1))
    return query, grid_angles(rows, cols, head_dim)
