"""Residual vector quantization (RQ-VAE, Lee et al. 2022), the quantizer of both DualToken branches (docs/method.md §2).

One code per vector is coarse. A residual quantizer spends D codes per vector, each quantizing what the
previous ones left over:

    r_1 = z,    k_d = argmin_j ||r_d - e_j||^2,    q_d = e_{k_d},    r_{d+1} = r_d - q_d,
    z_hat = sum_{d=1..D} q_d.

DualToken uses depth D = 8 and **one** codebook of K = 16,384 codes shared by all depths (per-depth
codebooks are an option). Training signals:

- the output z_hat is passed straight through to z (``quantizer.straight_through``);
- the commitment term is the mean over depths of ``mean((z - sum_{k<=d} q_k)^2)`` (docs/method.md §3), returned
  *unweighted*: loss weights live in the loss config;
- codebooks move by EMA k-means, **once per optimizer step** (``update_codebook``), from statistics
  the forward passes accumulate. Each depth contributes *its own* residual r_d (the released code let
  every depth see the last residual, docs/method.md §7.1, and updated the shared codebook D times a step, §7.2).

Usage (shapes as the model uses them, B images of an H x W token grid)::

    rq = ResidualQuantizer(dim=32, depth=8, codebook_size=16384)
    out = rq(z)                    # z (B, N, 32) -> out.quantized (B, N, 32), out.codes (B, N, 8)
    assert torch.equal(rq.decode(out.codes), out.quantized)   # exact, until the codebook next moves
    loss = task_loss + 5 * out.commitment
    loss.backward(); optimizer.step(); rq.update_codebook()   # the codebook moves here, once per step
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualtoken_lite.quantizers.codebook import CODEBOOK_OPTIONS, Codebook
from dualtoken_lite.quantizers.vector import check_features, straight_through, usage_stats
from dualtoken_lite.settings import ConfigError, require_at_least


@dataclass
class QuantizerConfig:
    """One residual vector quantizer (docs/method.md §2: depth 8, one shared codebook of 16,384 codes)."""

    code_dim: int = 32  # d, the dimension of each code (32 in the released configs; 256 in the early release's)
    depth: int = 8  # D, residual depth: codes per token position
    codebook_size: int = 16384  # K, codes in the codebook
    shared_codebook: bool = True  # one codebook for all depths (paper) or one per depth
    decay: float = 0.99  # EMA decay of the k-means codebook updates
    eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    dead_code_threshold: float = 1.0  # a code whose EMA count falls below this is restarted from data
    cosine: bool = False  # l2-normalise vectors and codes before the lookup (cosine similarity)
    chunk_size: int = 128  # rows of the N x K distance matrix computed at once (128 x 16,384 fp32: 8 MiB, in cache)


def validate_quantizer(q: QuantizerConfig, where: str) -> None:
    """Check one quantizer config; raise ConfigError naming ``where`` (e.g. 'pixel_quantizer')."""
    require_at_least(q, ("code_dim", "depth", "chunk_size"), 1, where=f"{where}.")
    require_at_least(q, ("codebook_size",), 2, where=f"{where}.")
    if not 0.0 < q.decay < 1.0:
        raise ConfigError(f"{where}.decay={q.decay} must lie strictly between 0 and 1 (paper: 0.99)")
    if q.eps <= 0:
        raise ConfigError(f"{where}.eps={q.eps} must be > 0 (paper: 1e-5)")


@dataclass
class QuantizerStats:
    """Usage statistics of one forward pass, per depth."""

    utilisation: Tensor  # (D,) distinct codes used / K at each depth
    perplexity: Tensor  # (D,) exp(entropy of the code histogram) at each depth


@dataclass
class RVQOutput:
    """What ``ResidualQuantizer.forward`` returns."""

    quantized: Tensor  # (..., d) straight-through: forward value = sum of all depths' codes, grad flows to z
    codes: Tensor  # (..., D) long, the code chosen at each depth
    partial_sums: Tensor  # (D, ..., d) sum_{k<=d} q_k, detached
    commitment: Tensor  # scalar, unweighted: mean over d of mean((z - sum_{k<=d} q_k)^2), grads to z only
    stats: QuantizerStats


class ResidualQuantizer(nn.Module):
    """D-level residual vector quantizer with a shared (or per-depth) EMA codebook."""

    def __init__(self, dim: int, depth: int, codebook_size: int, shared_codebook: bool = True, **codebook_options):
        """``codebook_options``: how each codebook looks up and moves (``Codebook``'s arguments: decay, eps,
        dead_code_threshold, cosine, chunk_size)."""
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1 (paper: 8)")
        self.dim, self.depth, self.codebook_size = dim, depth, codebook_size
        self.shared_codebook = shared_codebook
        self.codebooks = nn.ModuleList(
            Codebook(codebook_size, dim, seed=i, **codebook_options) for i in range(1 if shared_codebook else depth)
        )

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> ResidualQuantizer:
        """Build from a ``QuantizerConfig``."""
        options = {name: getattr(cfg, name) for name in CODEBOOK_OPTIONS}
        return cls(cfg.code_dim, cfg.depth, cfg.codebook_size, cfg.shared_codebook, **options)

    def codebook_at(self, depth: int) -> Codebook:
        """The codebook that depth (0-indexed) looks up."""
        return self.codebooks[0 if self.shared_codebook else depth]

    def quantize(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The residual loop on flat (N, d) fp32 -> codes (N, D), partial sums (D, N, d), residuals (N, D, d)."""
        residual = flat.detach()  # r_1 = z
        partial = torch.zeros_like(residual)
        codes, partials, residuals = [], [], []
        for d in range(self.depth):
            codebook = self.codebook_at(d)
            code = codebook.lookup(residual)  # (N,)
            q = codebook.embed[code]  # (N, d)
            residuals.append(residual)  # r_d: a fresh tensor per depth, never changed in place (docs/method.md §7.1)
            codes.append(code)
            partial = partial + q  # sum_{k<=d} q_k, same op order as decode() -> bit-identical
            partials.append(partial)
            residual = residual - q  # r_{d+1} = r_d - q_d
        return torch.stack(codes, dim=-1), torch.stack(partials), torch.stack(residuals, dim=1)

    def accumulate(self, residuals: Tensor, codes: Tensor) -> None:
        """Add each depth's own residuals (N, D, d) and codes (N, D) to the codebooks' step statistics."""
        if self.shared_codebook:  # row-major (row, depth) order: k micro-batches pool like one big batch
            self.codebooks[0].accumulate(residuals.reshape(-1, self.dim), codes.reshape(-1))
        else:
            for d, codebook in enumerate(self.codebooks):
                codebook.accumulate(residuals[:, d], codes[:, d])

    def forward(self, z: Tensor) -> RVQOutput:
        """z (..., d) -> RVQOutput; in training mode this only accumulates EMA statistics (no code moves)."""
        check_features(z, self.dim)
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.dim).float()  # (N, d), fp32 even under bf16 autocast
        codes, partials, residuals = self.quantize(flat)  # (N, D), (D, N, d), (N, D, d)
        if self.training:
            self.accumulate(residuals, codes)
        # mean over depths of mean over elements == one mean over (D, N, d): every depth has N * d elements
        commitment = (flat.unsqueeze(0) - partials).pow(2).mean() if flat.numel() else flat.sum()
        utilisation, perplexity = zip(*(usage_stats(codes[:, d], self.codebook_size) for d in range(self.depth)))
        return RVQOutput(
            quantized=straight_through(flat, partials[-1]).reshape(*lead, self.dim),
            codes=codes.reshape(*lead, self.depth),
            partial_sums=partials.reshape(self.depth, *lead, self.dim),
            commitment=commitment,
            stats=QuantizerStats(torch.stack(utilisation), torch.stack(perplexity)),
        )

    @torch.no_grad()
    def decode(self, codes: Tensor, depths: int | None = None) -> Tensor:
        """codes (..., D) -> (..., d): the sum of the first ``depths`` depths' code vectors (all D by default, which
        is exactly forward's quantized value). A coarser reconstruction from fewer depths may also be given just
        those codes, (..., depths)."""
        depths = self.depth if depths is None else depths
        if not 1 <= depths <= self.depth:
            raise ValueError(f"depths={depths} must lie in 1..{self.depth} (this quantizer's depth)")
        self.check_codes(codes, allowed_depths=(self.depth, depths))
        flat = codes.reshape(-1, codes.shape[-1])  # (N, D) or (N, depths)
        partial = torch.zeros(flat.shape[0], self.dim, device=self.codebooks[0].embed.device)
        for d in range(depths):
            partial = partial + self.codebook_at(d).embed[flat[:, d]]
        return partial.reshape(*codes.shape[:-1], self.dim)

    def check_codes(self, codes: Tensor, allowed_depths: tuple[int, ...] | None = None) -> None:
        """Raise ValueError unless codes is an integer tensor (..., D) (or (..., d), d in ``allowed_depths``) with
        values in [0, K)."""
        if not torch.is_tensor(codes) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor (..., {self.depth}), got {getattr(codes, 'dtype', codes)}")
        if codes.dim() < 1 or codes.shape[-1] not in (allowed_depths or (self.depth,)):
            raise ValueError(
                f"codes must have shape (..., {self.depth}) (one code per depth), got {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in [{int(codes.min())}, {int(codes.max())}]"
            )

    def update_codebook(self) -> dict[str, float]:
        """Once per optimizer step: all-reduce the accumulated statistics, EMA update, dead-code restart.

        Every rank must call it at the same point (it runs collectives when torch.distributed is initialised).
        A no-op when nothing was accumulated. Returns logging figures summed (counts) or averaged (usage)
        over the codebooks.
        """
        logs = [codebook.update() for codebook in self.codebooks]
        merged = {key: sum(log[key] for log in logs) for key in logs[0]}
        for key in ("updated", "utilisation", "perplexity"):
            merged[key] /= len(logs)
        return merged

    def extra_repr(self) -> str:
        return f"dim={self.dim}, depth={self.depth}, codebook_size={self.codebook_size}, shared={self.shared_codebook}"
