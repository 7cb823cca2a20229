"""Codebook: chunked fp32 lookup, EMA k-means step, Laplace smoothing, initialisation and dead-code restart."""

import pytest
import torch

from dualtoken_lite.quantizers.codebook import (
    Codebook,
    distance_table,
    draw_restart_vectors,
    grouped_argmin,
    laplace_smoothing,
    nearest_code,
)


def brute_force_distances(x, embed, cosine=False):
    """(N, K) squared distances in float64, the reference for the lookup."""
    x, embed = x.double(), embed.double()
    if cosine:
        x, embed = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(embed, dim=-1)
    return ((x[:, None, :] - embed[None]) ** 2).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("dim", [2, 32])
def test_lookup_equals_brute_force_argmin(chunk_size, cosine, dim):
    g = torch.Generator().manual_seed(chunk_size + dim)
    x, embed = torch.randn(300, dim, generator=g), torch.randn(50, dim, generator=g)
    codes = nearest_code(x, embed, chunk_size=chunk_size, cosine=cosine)
    dist = brute_force_distances(x, embed, cosine)
    chosen = dist.gather(1, codes[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, dist.min(1).values, rtol=0, atol=1e-5)  # ties may pick either code
    assert (codes == dist.argmin(1)).float().mean() > 0.99


def plain_fp32_codes(x, embed, chunk=2048):
    """The lookup written plainly: argmin of ||e||^2 - 2 x . e from a separate fp32 matmul and Tensor.argmin."""
    e_sq = embed.pow(2).sum(1)
    return torch.cat([(e_sq - 2 * x[s : s + chunk] @ embed.t()).argmin(1) for s in range(0, len(x), chunk)])


def float64_codes(x, embed, chunk=2048):
    """Nearest code by a float64 lookup, and each row's gap between its best and second-best distance."""
    codes, gaps = [], []
    x, embed = x.double(), embed.double()
    for start in range(0, len(x), chunk):
        rows = x[start : start + chunk]
        dist = rows.pow(2).sum(1, keepdim=True) + embed.pow(2).sum(1) - 2 * rows @ embed.t()  # (n, K)
        two = dist.topk(2, dim=1, largest=False)
        codes.append(two.indices[:, 0])
        gaps.append(two.values[:, 1] - two.values[:, 0])
    return torch.cat(codes), torch.cat(gaps)


def assert_lookup_is_exact(x, embed, chunk_size=128):
    """At most 1 code in 10,000 differs from the plain fp32 lookup's; where one differs from the float64 lookup's,
    the two codes' distances are closer than fp32 can resolve (||e||^2 - 2 x . e rounds at ~1e-7 of its terms)."""
    codes = nearest_code(x, embed, chunk_size=chunk_size)
    differ = codes != plain_fp32_codes(x, embed)
    assert differ.float().mean() <= 1e-4, f"{int(differ.sum())} of {len(x)} codes differ from the fp32 lookup's"
    exact, gaps = float64_codes(x, embed)
    scale = x.double().pow(2).sum(1) + embed.double().pow(2).sum(1).max()  # the size of the summed terms
    off = codes != exact
    assert (gaps[off] <= 1e-5 * scale[off]).all(), "a code differs from the float64 lookup's at a clear gap"


@pytest.mark.parametrize("size", [16, 300, 1000, 4096])  # below one group, padded to whole groups, whole groups
def test_grouped_argmin_equals_argmin_ties_included(size):
    g = torch.Generator().manual_seed(size)
    dist = torch.randint(0, 40, (257, size), generator=g).float()  # many exact ties: the first must win
    dist[:, size // 2] = -1.0  # a row minimum in a late group ...
    dist[:5, size - 1] = -1.0  # ... tied with a later column in some rows
    assert torch.equal(grouped_argmin(dist), dist.argmin(-1))


@pytest.mark.parametrize("size", [3, 256, 1000, 16384])
def test_distance_table_gives_squared_distances_up_to_a_row_constant(size):
    g = torch.Generator().manual_seed(size)
    x, embed = torch.randn(64, 32, generator=g), torch.randn(size, 32, generator=g)
    table = distance_table(embed)  # (33, K') padded with +inf columns
    dist = torch.cat([x, torch.ones(64, 1)], 1) @ table
    assert table.shape[1] % 256 == 0 or size <= 256
    assert torch.isinf(dist[:, size:]).all()
    want = brute_force_distances(x, embed) - x.double().pow(2).sum(1, keepdim=True)  # ||x||^2 is not in the table
    torch.testing.assert_close(dist[:, :size].double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size", [1000, 16384])  # padded, and the paper's K
def test_lookup_is_exact_on_random_data(size):
    g = torch.Generator().manual_seed(1)
    x, embed = torch.randn(20_000, 32, generator=g), torch.randn(size, 32, generator=g)
    assert_lookup_is_exact(x, embed)


def test_lookup_is_exact_on_clustered_data():
    """Codes and rows packed around a few centres: many codes at nearly equal distances, the hard case for fp32."""
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(32, 32, generator=g) * 4
    embed = centres[torch.randint(32, (4096,), generator=g)] + 0.05 * torch.randn(4096, 32, generator=g)
    x = centres[torch.randint(32, (20_000,), generator=g)] + 0.05 * torch.randn(20_000, 32, generator=g)
    assert_lookup_is_exact(x, embed)


def test_lookup_is_exact_on_tiny_world_residuals():
    """Every depth's residuals of the shipped tokenizer's pixel quantizer on 256 held-out images, its own codebook."""
    from dualtoken_lite import DualToken
    from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, to_tensor
    from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR

    model = DualToken.from_pretrained(TOKENIZER_DIR).eval()
    images, _ = load_split(ensure_tinyworld(splits=("eval",))["eval"])
    with torch.no_grad():
        hidden = model.encoder.run_blocks(model.encoder.embed(to_tensor(images[:256])), 1, model.cfg.pixel_layer)
        z = model.pixel_proj(hidden)  # (256, 64, 32): the pixel quantizer's input
        quantizer = model.pixel_quantizer
        _, _, residuals = quantizer.quantize(z.reshape(-1, quantizer.dim))  # (N, D, d), each depth's residual
    assert_lookup_is_exact(residuals.reshape(-1, quantizer.dim), quantizer.codebooks[0].embed)


def test_lookup_under_bf16_autocast_picks_fp32_codes():
    g = torch.Generator().manual_seed(0)
    x, embed = torch.randn(4000, 32, generator=g), torch.randn(512, 32, generator=g)
    reference = nearest_code(x, embed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_code(x, embed), reference)
    # a plain bf16 matmul does pick other codes for some rows: the test above could fail
    bf16 = (embed.bfloat16().float().pow(2).sum(-1) - 2 * (x.bfloat16() @ embed.bfloat16().t()).float()).argmin(1)
    assert (bf16 != reference).any()


def test_laplace_smoothing_keeps_total_and_removes_zeros():
    counts = torch.tensor([4.0, 0.0, 6.0])
    smoothed = laplace_smoothing(counts, eps=0.1)
    torch.testing.assert_close(smoothed.sum(), counts.sum())
    torch.testing.assert_close(smoothed, (counts + 0.1) / (10 + 0.3) * 10)
    assert (smoothed > 0).all()


def test_ema_update_matches_hand_computed_example():
    cb = Codebook(3, 2, decay=0.9, eps=1e-5, dead_code_threshold=0.5)
    cb.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    cb.cluster_size.copy_(torch.tensor([2.0, 1.0, 3.0]))
    cb.embed_avg.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 30.0]]))
    cb.initialised.fill_(True)
    x = torch.tensor([[1.0, 1.0], [9.0, 1.0], [11.0, -1.0], [-1.0, 1.0]])
    codes = cb.lookup(x)
    assert codes.tolist() == [0, 1, 1, 0]
    cb.accumulate(x, codes)
    log = cb.update()
    # by hand: N = 0.9 N + 0.1 n  -> [0.9*2 + 0.2, 0.9*1 + 0.2, 0.9*3]; m = 0.9 m + 0.1 sum
    n = torch.tensor([2.0, 1.1, 2.7])
    m = torch.tensor([[0.0, 0.2], [9.0 + 2.0, 0.0], [0.0, 27.0]])
    smoothed = (n + 1e-5) / (n.sum() + 3e-5) * n.sum()
    torch.testing.assert_close(cb.cluster_size, n)
    torch.testing.assert_close(cb.embed_avg, m)
    torch.testing.assert_close(cb.embed, m / smoothed[:, None])
    assert log["restarted"] == 0 and log["vectors"] == 4 and log["utilisation"] == pytest.approx(2 / 3)
    assert int(cb.steps) == 1


def test_nothing_moves_before_update_and_update_resets_accumulators():
    cb = Codebook(8, 4)
    before = {k: v.clone() for k, v in cb.state_dict().items()}
    x = torch.randn(50, 4)
    cb.accumulate(x, cb.lookup(x))
    for key, value in cb.state_dict().items():
        assert torch.equal(value, before[key]), key
    cb.update()
    assert cb._count is None and cb._pool == []
    after = {k: v.clone() for k, v in cb.state_dict().items()}
    assert cb.update()["updated"] == 0  # no-op: nothing accumulated since
    for key, value in cb.state_dict().items():
        assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_first_update_initialises_codes_from_data(threshold):
    cb = Codebook(16, 3, dead_code_threshold=threshold)
    x = torch.randn(40, 3) + 100.0  # far from the random N(0, 1) initial codes: one code takes every row
    cb.accumulate(x, cb.lookup(x))
    cb.update()
    assert bool(cb.initialised)
    rows_or_means = torch.cdist(cb.embed, x).min(1).values
    far = rows_or_means > 20  # a code still near the origin was not initialised from data
    assert not far.any(), cb.embed[far]


def test_restart_revives_dead_codes():
    torch.manual_seed(0)
    cb = Codebook(32, 2, dead_code_threshold=1.0)
    x = torch.randn(500, 2)
    for _ in range(3):  # train on the data, all codes alive
        cb.accumulate(x, cb.lookup(x))
        cb.update()
    cb.embed[:8] = 1e3  # 8 codes far away: nobody chooses them any more
    cb.embed_avg[:8] = 1e3 * cb.cluster_size[:8, None]
    restarted = 0
    for _ in range(400):  # their EMA counts decay below the threshold, then they are restarted
        cb.accumulate(x, cb.lookup(x))
        restarted += cb.update()["restarted"]
        if cb.embed.abs().max() < 50:
            break
    assert cb.embed.abs().max() < 50, "the far codes were replaced by data vectors"
    assert restarted >= 8
    assert set(range(8)) <= set(cb.lookup(x).tolist()), "the revived codes are used again"


def test_restart_draw_without_replacement_and_seeded():
    pool = torch.arange(20.0)[:, None].repeat(1, 3)
    a = draw_restart_vectors(pool, 10, torch.Generator().manual_seed(1))
    b = draw_restart_vectors(pool, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len(set(a[:, 0].tolist())) == 10  # distinct rows when the pool is large enough
    assert draw_restart_vectors(pool[:3], 10, torch.Generator().manual_seed(1)).shape == (10, 3)


def test_state_dict_round_trip_and_resume_equals_uninterrupted():
    torch.manual_seed(0)
    data = [torch.randn(64, 4) * (1 + i) for i in range(6)]

    def step(cb, x):
        cb.accumulate(x, cb.lookup(x))
        cb.update()

    torch.manual_seed(1)
    straight = Codebook(16, 4, dead_code_threshold=2.0)
    for x in data:
        step(straight, x)
    torch.manual_seed(1)
    first = Codebook(16, 4, dead_code_threshold=2.0)
    for x in data[:3]:
        step(first, x)
    state = first.state_dict()
    assert {"embed", "cluster_size", "embed_avg", "initialised", "steps"} <= set(state)
    torch.manual_seed(123)  # a different random init, overwritten by the load
    resumed = Codebook(16, 4, dead_code_threshold=2.0)
    resumed.load_state_dict(state)
    for x in data[3:]:
        step(resumed, x)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize(
    "kwargs", [{"size": 1, "dim": 4}, {"size": 4, "dim": 4, "decay": 1.0}, {"size": 4, "dim": 4, "eps": 0.0}]
)
def test_bad_codebook_settings_raise(kwargs):
    with pytest.raises(ValueError):
        Codebook(**kwargs)
