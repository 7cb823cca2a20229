"""Codebook: chunked fp32 lookup, EMA k-means step, Laplace smoothing, initialisation and dead-code restart."""

import pytest
import torch

from dualtoken_lite.quantizers.codebook import Codebook, draw_restart_vectors, laplace_smoothing, nearest_code


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
