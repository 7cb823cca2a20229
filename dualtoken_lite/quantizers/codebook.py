"""A codebook with a chunked fp32 nearest-code lookup and once-per-step EMA k-means updates (docs/method.md §2, §7).

The codebook holds K code vectors of dimension d. Three things happen to it:

1. **Lookup** (every forward): each input row x gets the index of its nearest code,
   ``argmin_k ||x - e_k||^2 = argmin_k (||e_k||^2 - 2 x . e_k)`` (``||x||^2`` is the same for every k).
   It runs in fp32 even under bf16 autocast (bf16 picks a different code for a few percent of rows),
   128 rows at a time: one matmul per chunk into a block that stays in cache, then a two-pass argmin, so
   the full N x K distance matrix is never built (benchmarks/bench_quantizer.py).
2. **Accumulation** (every training forward): per code, how many rows chose it and their sum. Nothing
   moves yet, so k micro-batches accumulate exactly like one k-times-larger batch (docs/method.md §7.2).
3. **Update** (once per optimizer step, ``update()``): the accumulated statistics are all-reduced across
   ranks, then an exponential moving average (EMA) of k-means moves every code towards the mean of the
   rows that chose it (van den Oord et al. 2017, appendix A.1), with Laplace smoothing of the counts.
   Codes whose EMA count falls below ``dead_code_threshold`` are *dead*: they are restarted from rows of
   the current step, drawn identically on every rank. Counts start at 0, so the first update initialises
   the codebook from data.

Everything that must survive a checkpoint is a buffer (codes, EMA counts and sums, the initialised flag,
the update counter); the accumulators of the current step are plain attributes, so DDP never broadcasts
them and ``state_dict()`` never holds them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

RESTART_SEED = 20250318  # base seed of the restart draws; the update counter is added, so resumes replay them
CODEBOOK_OPTIONS = ("decay", "eps", "dead_code_threshold", "cosine", "chunk_size")  # Codebook's settings by name
NO_UPDATE = {"updated": 0.0, "vectors": 0.0, "restarted": 0.0, "utilisation": 0.0, "perplexity": 0.0}


ARGMIN_GROUP = 256  # codes per group of ``grouped_argmin`` (a whole number of 16-float vector registers)


def distance_table(embed: Tensor, group: int = ARGMIN_GROUP) -> Tensor:
    """Codes (K, d) -> table T (d + 1, K') with [x, 1] @ T = ||e_k||^2 - 2 x . e_k, one matmul for the whole formula.

    When K > group, K' rounds K up to a multiple of ``group`` with padding columns whose distance is +inf, so
    ``grouped_argmin`` never picks them. -2 e is exact in floating point (a power of two).
    """
    K, d = embed.shape
    pad = (-K) % group if K > group else 0
    table = embed.new_zeros(d + 1, K + pad)
    table[:d, :K] = embed.t() * -2.0
    table[d, :K] = embed.pow(2).sum(-1)  # ||e_k||^2
    table[d, K:] = float("inf")
    return table


def grouped_argmin(dist: Tensor, group: int = ARGMIN_GROUP) -> Tensor:
    """Tensor.argmin over the last dim of dist (n, K) in two vectorised passes; the same index (the first minimum).

    PyTorch's CPU argmin compares one element at a time; amin runs on whole vector registers. So: the minimum of
    each group of ``group`` columns (amin), the first group holding the row's minimum (argmin over K / group
    values), then the first minimum inside that group (argmin over ``group`` values).
    """
    n, K = dist.shape
    if K <= group or K % group:
        return dist.argmin(-1)
    groups = dist.view(n, K // group, group)  # (n, G, group)
    best = groups.amin(-1).argmin(-1)  # (n,) the first group that holds the row's minimum
    inside = groups[torch.arange(n, device=dist.device), best].argmin(-1)  # (n,) its first minimum
    return best * group + inside


@torch.no_grad()
def nearest_code(x: Tensor, embed: Tensor, chunk_size: int = 128, cosine: bool = False) -> Tensor:
    """Index of the nearest code for each row: x (N, d), embed (K, d) -> (N,) long, fp32, chunked over rows.

    Each chunk is one matmul [x, 1] @ ``distance_table`` into a reused (chunk_size, K) block (8 MiB at K = 16,384
    and 128 rows: it stays in cache), then ``grouped_argmin`` of that block; the full N x K matrix never exists.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, embed = x.float(), embed.float()
        if cosine:  # nearest by angle: on unit vectors ||x - e||^2 = 2 - 2 x . e
            x, embed = F.normalize(x, dim=-1), F.normalize(embed, dim=-1)
        table = distance_table(embed)  # (d + 1, K')
        x1 = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (N, d + 1): [x, 1]
        codes = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        block = x.new_empty(min(chunk_size, x.shape[0]), table.shape[1])  # (chunk_size, K'), reused by every chunk
        for start in range(0, x.shape[0], chunk_size):
            rows = x1[start : start + chunk_size]  # (n, d + 1), n <= chunk_size
            dist = torch.mm(rows, table, out=block[: rows.shape[0]])  # (n, K') = ||e||^2 - 2 x . e
            codes[start : start + chunk_size] = grouped_argmin(dist)
    return codes


def ema_(average: Tensor, value: Tensor, decay: float) -> None:
    """Exponential moving average in place: average <- decay * average + (1 - decay) * value."""
    average.mul_(decay).add_(value, alpha=1.0 - decay)


def laplace_smoothing(counts: Tensor, eps: float) -> Tensor:
    """(n_k + eps) / (n + K eps) * n: no count is zero (no division by zero), the total n is kept."""
    total = counts.sum()
    return (counts + eps) / (total + counts.numel() * eps) * total


def distributed_ready() -> bool:
    """True when torch.distributed is initialised, i.e. statistics must be all-reduced across ranks."""
    return dist.is_available() and dist.is_initialized()


def draw_restart_vectors(pool: Tensor, n: int, rng: torch.Generator) -> Tensor:
    """n rows drawn without replacement (when possible) from every rank's pool, concatenated in rank order.

    pool: (M_r, d) this rank's candidates -> (n, d), the same on every rank. The indices come from a
    random number generator seeded identically everywhere; each rank fills the rows it owns and a sum all-reduce
    assembles them, so ranks agree exactly with one process that saw the concatenated batch.
    """
    sizes = [pool.shape[0]]
    offset = 0
    if distributed_ready():
        all_sizes = [torch.zeros(1, dtype=torch.long, device=pool.device) for _ in range(dist.get_world_size())]
        dist.all_gather(all_sizes, torch.tensor([pool.shape[0]], device=pool.device))
        sizes = [int(s) for s in all_sizes]
        offset = sum(sizes[: dist.get_rank()])
    total = sum(sizes)
    if total >= n:
        index = torch.randperm(total, generator=rng)[:n]
    else:  # fewer candidates than dead codes: some codes share a restart vector
        index = torch.randint(total, (n,), generator=rng)
    index = index.to(pool.device)
    mine = (index >= offset) & (index < offset + pool.shape[0])
    vectors = torch.zeros(n, pool.shape[1], dtype=pool.dtype, device=pool.device)
    vectors[mine] = pool[index[mine] - offset]
    if distributed_ready():
        dist.all_reduce(vectors)  # x + 0 + ... + 0 == x exactly
    return vectors


def usage_figures(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Utilisation (share of codes used at least once) and perplexity exp(H(p)) of a code histogram (K,)."""
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return (counts > 0).float().mean(), entropy.exp()


class Codebook(nn.Module):
    """K codes of dimension d, looked up by nearest neighbour and moved by once-per-step EMA k-means."""

    def __init__(
        self,
        size: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        cosine: bool = False,
        chunk_size: int = 128,
        seed: int = 0,
    ):
        super().__init__()
        if size < 2 or dim < 1:
            raise ValueError(f"a codebook needs size >= 2 and dim >= 1, got size={size}, dim={dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay} must lie strictly between 0 and 1 (paper: 0.99)")
        if eps <= 0 or dead_code_threshold < 0 or chunk_size < 1:
            raise ValueError(
                f"need eps > 0, dead_code_threshold >= 0, chunk_size >= 1; got eps={eps}, "
                f"dead_code_threshold={dead_code_threshold}, chunk_size={chunk_size}"
            )
        self.size, self.dim = size, dim
        self.decay, self.eps, self.dead_code_threshold = decay, eps, dead_code_threshold
        self.cosine, self.chunk_size, self.seed = cosine, chunk_size, seed
        self.register_buffer("embed", torch.randn(size, dim))  # (K, d) the codes; replaced from data at step 1
        self.register_buffer("cluster_size", torch.zeros(size))  # (K,) EMA of how many rows chose each code
        self.register_buffer("embed_avg", torch.zeros(size, dim))  # (K, d) EMA of the sum of those rows
        self.register_buffer("initialised", torch.tensor(False))  # has update() run at least once?
        self.register_buffer("steps", torch.tensor(0))  # number of updates applied (seeds the restart draws)
        self.reset_accumulators()

    def reset_accumulators(self) -> None:
        """Forget the current step's counts, sums and restart candidates."""
        self._count: Tensor | None = None  # (K,) rows that chose each code since the last update
        self._sum: Tensor | None = None  # (K, d) their sum
        self._pool: list[Tensor] = []  # candidate restart vectors, in arrival order

    def lookup(self, x: Tensor) -> Tensor:
        """Nearest code index of each row: x (N, d) -> (N,) long."""
        return nearest_code(x, self.embed, self.chunk_size, self.cosine)

    def restarts_possible(self) -> bool:
        """Whether the next update may restart codes (so candidate vectors must be kept)."""
        return self.dead_code_threshold > 0 or not bool(self.initialised)

    @torch.no_grad()
    def accumulate(self, x: Tensor, codes: Tensor) -> None:
        """Add rows x (M, d) that chose codes (M,) to this step's statistics; the codes do not move yet."""
        x = x.detach().float()
        if self._count is None:
            self._count = torch.zeros(self.size, device=x.device)
            self._sum = torch.zeros(self.size, self.dim, device=x.device)
        self._count += torch.bincount(codes, minlength=self.size).float()  # no N x K one-hot
        self._sum.index_add_(0, codes, x)
        if self.restarts_possible():
            self._pool.append(x)

    @torch.no_grad()
    def update(self) -> dict[str, float]:
        """Apply the accumulated statistics once: all-reduce, EMA k-means step, dead-code restart."""
        if self._count is None and not distributed_ready():
            return dict(NO_UPDATE)
        device = self.embed.device
        count = self._count if self._count is not None else torch.zeros(self.size, device=device)
        total = self._sum if self._sum is not None else torch.zeros(self.size, self.dim, device=device)
        stats = torch.cat([count[:, None], total], dim=1)  # (K, 1 + d): one all-reduce instead of two
        if distributed_ready():
            dist.all_reduce(stats)
        count, total = stats[:, 0], stats[:, 1:]
        pool = torch.cat(self._pool) if self._pool else torch.zeros(0, self.dim, device=device)
        self.reset_accumulators()
        vectors = float(count.sum())
        if vectors == 0:  # nothing was accumulated on any rank
            return dict(NO_UPDATE)
        utilisation, perplexity = usage_figures(count)
        self.ema_step(count, total)
        restarted = self.restart_dead_codes(count, pool)
        self.initialised.fill_(True)
        self.steps += 1
        return {
            "updated": 1.0,
            "vectors": vectors,
            "restarted": float(restarted),
            "utilisation": float(utilisation),
            "perplexity": float(perplexity),
        }

    def ema_step(self, count: Tensor, total: Tensor) -> None:
        """EMA k-means: N_k <- decay N_k + (1-decay) n_k; m_k <- decay m_k + (1-decay) sum_k; e_k = m_k / N_k."""
        ema_(self.cluster_size, count, self.decay)
        ema_(self.embed_avg, total, self.decay)
        smoothed = laplace_smoothing(self.cluster_size, self.eps)  # (K,)
        self.embed.copy_(self.embed_avg / smoothed[:, None])

    def dead_codes(self, count: Tensor) -> Tensor:
        """(K,) bool: EMA count below the threshold, or (first update) no row at all chose the code."""
        dead = self.cluster_size < self.dead_code_threshold
        if not bool(self.initialised):
            dead |= count == 0  # initialise from data even when restarts are switched off
        return dead

    def restart_dead_codes(self, count: Tensor, pool: Tensor) -> int:
        """Replace dead codes by rows of the current step (drawn identically on every rank); return how many."""
        dead = self.dead_codes(count)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        rng = torch.Generator().manual_seed(RESTART_SEED + 1_000_003 * self.seed + int(self.steps))
        vectors = draw_restart_vectors(pool, n_dead, rng)  # (n_dead, d)
        start = self.dead_code_threshold if self.dead_code_threshold > 0 else 1.0
        self.embed[dead] = vectors
        self.cluster_size[dead] = start  # a restarted code starts at the threshold: used soon or restarted again
        self.embed_avg[dead] = vectors * start  # keeps e_k = m_k / N_k consistent
        return n_dead

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, dim={self.dim}, decay={self.decay}, eps={self.eps}, "
            f"dead_code_threshold={self.dead_code_threshold}, cosine={self.cosine}, chunk_size={self.chunk_size}"
        )
