"""ResidualQuantizer: the interface the model builds on, its exactness and its once-per-step EMA semantics."""

import copy

import pytest
import torch

from dualtoken_lite.quantizers.residual import QuantizerConfig, ResidualQuantizer, RVQOutput

OPTIONS = [
    {"shared_codebook": True},
    {"shared_codebook": False},
    {"shared_codebook": True, "cosine": True},
    {"shared_codebook": True, "chunk_size": 7},
]


def make(dim=6, depth=3, size=32, **kwargs):
    torch.manual_seed(0)
    return ResidualQuantizer(dim, depth, size, **kwargs)


def trained(steps=3, **kwargs):
    """A quantizer after a few EMA steps on Gaussian data, so its codes come from data."""
    rq = make(**kwargs)
    for i in range(steps):
        rq(torch.randn(200, rq.dim, generator=torch.Generator().manual_seed(i)))
        rq.update_codebook()
    return rq


def assert_same_state(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("lead", [(5,), (2, 3, 4), (0,)])
def test_output_shapes_and_decode_equals_forward_exactly(options, lead):
    rq = trained(**options)
    z = torch.randn(*lead, rq.dim)
    out = rq(z)
    assert isinstance(out, RVQOutput)
    assert out.quantized.shape == z.shape and out.codes.shape == (*lead, rq.depth)
    assert out.partial_sums.shape == (rq.depth, *lead, rq.dim)
    assert out.stats.utilisation.shape == out.stats.perplexity.shape == (rq.depth,)
    assert out.codes.dtype == torch.long
    assert torch.equal(rq.decode(out.codes), out.quantized)  # bit-identical, not just close
    assert torch.equal(out.partial_sums[-1], out.quantized)


@pytest.mark.parametrize("options", OPTIONS)
def test_partial_sums_and_commitment_match_their_definitions(options):
    rq = trained(**options)
    rq.eval()
    z = torch.randn(4, 9, rq.dim)
    out = rq(z)
    running = torch.zeros_like(z)
    for d in range(rq.depth):
        running = running + rq.codebook_at(d).embed[out.codes[..., d]]
        torch.testing.assert_close(out.partial_sums[d], running)
    expected = torch.stack([((z - out.partial_sums[d]) ** 2).mean() for d in range(rq.depth)]).mean()
    torch.testing.assert_close(out.commitment, expected)


@pytest.mark.parametrize("options", OPTIONS)
def test_codes_are_greedy_nearest_codes_of_each_residual(options):
    rq = trained(**options)
    z = torch.randn(50, rq.dim)
    out = rq(z)
    residual = z.clone()
    for d in range(rq.depth):
        embed = rq.codebook_at(d).embed
        if options.get("cosine"):
            score = -torch.nn.functional.normalize(residual, dim=-1) @ torch.nn.functional.normalize(embed, dim=-1).t()
        else:
            score = torch.cdist(residual.double(), embed.double())
        best = score.gather(1, score.argmin(1, keepdim=True)).squeeze(1)
        chosen = score.gather(1, out.codes[:, d : d + 1]).squeeze(1)
        torch.testing.assert_close(chosen, best, rtol=0, atol=1e-5)
        residual = residual - embed[out.codes[:, d]]


@pytest.mark.parametrize("options", OPTIONS)
def test_gradients_pass_straight_through(options):
    rq = trained(**options)
    z = torch.randn(3, 7, rq.dim, requires_grad=True)
    out = rq(z)
    weight = torch.randn_like(z)
    (out.quantized * weight).sum().backward()
    torch.testing.assert_close(z.grad, weight)  # d quantized / d z = identity
    z.grad = None
    out = rq(z)
    out.commitment.backward()
    expected = 2 * (z.detach().unsqueeze(0) - out.partial_sums).sum(0) / (rq.depth * z.numel())
    torch.testing.assert_close(z.grad, expected)
    assert not out.partial_sums.requires_grad
    assert all(not b.requires_grad for b in rq.buffers())


@pytest.mark.parametrize("shared", [True, False])
def test_each_depth_accumulates_its_own_residual(shared):
    rq = trained(shared_codebook=shared)
    z = torch.randn(40, rq.dim)
    out = rq(z)
    previous = torch.cat([torch.zeros(1, *z.shape), out.partial_sums[:-1]])  # sum_{k<d} q_k, (D, N, d)
    residuals = z.unsqueeze(0) - previous  # r_d = z - sum_{k<d} q_k
    for i, codebook in enumerate(rq.codebooks):
        depths = range(rq.depth) if shared else [i]
        count = sum(torch.bincount(out.codes[:, d], minlength=rq.codebook_size) for d in depths).float()
        total = sum(torch.zeros(rq.codebook_size, rq.dim).index_add_(0, out.codes[:, d], residuals[d]) for d in depths)
        torch.testing.assert_close(codebook._count, count)
        torch.testing.assert_close(codebook._sum, total, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("threshold", [4.0, 8.0])
def test_accumulated_micro_batches_equal_one_big_batch(options, threshold):
    a = make(dead_code_threshold=threshold, **options)
    b = copy.deepcopy(a)
    restarted = 0.0
    for step in range(4):
        g = torch.Generator().manual_seed(100 + step)
        parts = [torch.randn(n, 2, a.dim, generator=g) * (step + 1) for n in (30, 11, 19)]
        for part in parts:  # three micro-batches ...
            a(part)
        log_a = a.update_codebook()
        b(torch.cat(parts))  # ... against one batch of all of them
        log_b = b.update_codebook()
        restarted += log_a["restarted"]
        assert log_a["restarted"] == log_b["restarted"] and log_a["vectors"] == log_b["vectors"]
        assert_same_state(a, b, atol=1e-5)
    assert restarted > a.codebook_size  # restarts happened after the initialisation, not only in it


@pytest.mark.parametrize("options", OPTIONS)
def test_codebook_moves_once_per_step_and_never_in_eval(options):
    rq = make(**options)
    before = copy.deepcopy(rq.state_dict())
    for _ in range(3):
        rq(torch.randn(20, rq.dim))
    assert_same_state(rq, make(**options))  # training forwards only accumulate
    rq.eval()
    rq(torch.randn(20, rq.dim))
    assert all(c._count is not None for c in rq.codebooks)
    rq.update_codebook()  # applies the three training forwards, once
    assert all(int(c.steps) == 1 for c in rq.codebooks)
    assert not torch.equal(rq.codebooks[0].embed, before["codebooks.0.embed"])
    after = copy.deepcopy(rq.state_dict())
    for _ in range(3):
        rq(torch.randn(20, rq.dim))  # eval forwards accumulate nothing
    log = rq.update_codebook()
    assert log["updated"] == 0
    for key, value in rq.state_dict().items():
        assert torch.equal(value, after[key]), key


def test_bf16_autocast_chooses_the_fp32_codes():
    rq = trained(dim=32, depth=4, size=256, steps=2)
    rq.eval()
    z = torch.randn(2000, 32)
    reference = rq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rq(z)
        out_bf16_input = rq(z.bfloat16())
    assert torch.equal(out.codes, reference.codes)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out_bf16_input.codes, rq(z.bfloat16().float()).codes)


def test_error_falls_with_depth_after_training():
    rq = trained(dim=8, depth=4, size=64, steps=10)
    z = torch.randn(500, 8, generator=torch.Generator().manual_seed(99))
    rq.eval()
    errors = ((rq(z).partial_sums - z) ** 2).mean(dim=(1, 2))
    assert (errors[1:] < errors[:-1]).all(), errors


def test_state_dict_round_trips_everything():
    a = trained(shared_codebook=False)
    b = make(shared_codebook=False, size=32)
    torch.manual_seed(5)
    for c in b.codebooks:
        c.embed.normal_()
    b.load_state_dict(a.state_dict())
    assert_same_state(a, b)
    z = torch.randn(30, a.dim)
    a(z), b(z)
    a.update_codebook(), b.update_codebook()
    assert_same_state(a, b)
    keys = set(a.state_dict())
    assert {"codebooks.0.embed", "codebooks.0.cluster_size", "codebooks.0.embed_avg", "codebooks.0.initialised"} <= keys


def test_from_config():
    cfg = QuantizerConfig(code_dim=16, depth=5, codebook_size=128, shared_codebook=False, cosine=True, chunk_size=64)
    rq = ResidualQuantizer.from_config(cfg)
    assert (rq.dim, rq.depth, rq.codebook_size, len(rq.codebooks)) == (16, 5, 128, 5)
    assert rq.codebooks[0].cosine and rq.codebooks[0].chunk_size == 64


@pytest.mark.parametrize(
    "z, match",
    [
        (torch.randn(4, 5), "6"),
        (torch.tensor([[0.0] * 5 + [float("nan")]]), "non-finite"),
        (torch.tensor([[0.0] * 5 + [float("inf")]]), "non-finite"),
        (torch.zeros(4, 6, dtype=torch.long), "floating"),
    ],
)
def test_bad_input_raises(z, match):
    with pytest.raises(ValueError, match=match):
        make()(z)


@pytest.mark.parametrize(
    "codes, match",
    [
        (torch.tensor([[0, 1, 32]]), r"\[0, 32\).*32"),
        (torch.tensor([[0, -1, 3]]), r"-1"),
        (torch.tensor([[0, 1]]), r"\(1, 2\)"),
        (torch.tensor([[0.0, 1.0, 2.0]]), "integer"),
    ],
)
def test_bad_codes_raise(codes, match):
    with pytest.raises(ValueError, match=match):
        make().decode(codes)


@pytest.mark.parametrize("options", OPTIONS[:2])
def test_decoding_the_first_depths_sums_only_their_codes(options):
    rq = trained(**options).eval()
    codes = rq(torch.randn(10, rq.dim)).codes  # (10, 3)
    by_hand = [torch.zeros(10, rq.dim)]
    for d in range(rq.depth):
        by_hand.append(by_hand[-1] + rq.codebook_at(d).embed[codes[:, d]])
    for d in range(1, rq.depth + 1):
        assert torch.equal(rq.decode(codes, depths=d), by_hand[d])  # the full codes, first d depths used
        assert torch.equal(rq.decode(codes[:, :d], depths=d), by_hand[d])  # or just those d codes
    assert torch.equal(rq.decode(codes), rq.decode(codes, depths=rq.depth))
    for bad in (0, rq.depth + 1):
        with pytest.raises(ValueError, match="depths"):
            rq.decode(codes, depths=bad)
    with pytest.raises(ValueError, match="shape"):
        rq.decode(codes[:, :2], depths=1)  # two codes but one depth asked: ambiguous, refused
