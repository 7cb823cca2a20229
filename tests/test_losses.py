"""The training objective: each term against a hand computation, gradients only where they belong, the
adaptive GAN weight (value, clamp, bf16), gradient accumulation, and the loss config presets."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dualtoken_lite.losses import terms as L
from dualtoken_lite.losses.gan import PatchDiscriminator
from dualtoken_lite.training.presets import loss_preset


# ------------------------------------------------------------------------------------------------ helpers
class TinyGenerator(nn.Module):
    """A stand-in tokenizer: images (B, 3, 8, 8) -> tokens (B, 4, 6) -> reconstruction via decoder.conv_out."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 6, 4, stride=4)  # (B, 6, 2, 2)
        self.sem = nn.Linear(6, 6)
        self.decoder = nn.Module()
        self.decoder.conv_out = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        z = self.enc(x)  # (B, 6, 2, 2)
        tokens = z.flatten(2).transpose(1, 2)  # (B, 4, 6)
        h = self.sem(tokens)
        x_hat = self.decoder.conv_out(F.interpolate(z, scale_factor=4.0))  # (B, 3, 8, 8)
        return SimpleNamespace(
            reconstruction=x_hat, semantic_features=h, pooled=h.mean(1),
            pixel=SimpleNamespace(commitment=z.pow(2).mean()), semantic=SimpleNamespace(commitment=0.5 * h.pow(2).mean()),
        )


def fixed_targets(batch: int, seed: int = 1) -> L.TeacherTargets:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, 4, 6, generator=g)
    return L.TeacherTargets(hidden=hidden, pooled=hidden.mean(1) + 0.1)


def small_disc() -> PatchDiscriminator:
    return PatchDiscriminator(base_channels=32, n_layers=1)  # 8x8 images -> 4x4 logits


@pytest.fixture
def setup():
    torch.manual_seed(0)
    gen, disc = TinyGenerator(), small_disc()
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    return gen, disc, images, fixed_targets(4)


def grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------------------- single terms
def test_reconstruction_by_hand():
    x_hat, x = torch.tensor([[0.5, -0.5, 1.0, 0.0]]), torch.zeros(1, 4)
    assert L.reconstruction_loss(x_hat, x).item() == pytest.approx((0.25 + 0.25 + 1.0) / 4)
    assert L.reconstruction_loss(x_hat, x, "l1").item() == pytest.approx(2.0 / 4)
    with pytest.raises(ValueError, match="'mse' or 'l1'"):
        L.reconstruction_loss(x_hat, x, "l2")


def test_semantic_distillation_by_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, N=2, C=2)
    h_t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # token MSE = 1/4, token cos = 1
    pool, pool_t = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])  # MSE = 1, cos = 1/sqrt(2)
    total, parts = L.semantic_distillation(h, h_t, pool, pool_t, token_weight=5.0, pooled_weight=1.0)
    expected = 5 * (0.25 - 1.0) + (1.0 - 2**-0.5)
    assert total.item() == pytest.approx(expected, abs=1e-6)
    assert parts["sem_token_cos"].item() == pytest.approx(1.0)
    assert parts["sem_pool_mse"].item() == pytest.approx(1.0)
    # no semantic tokens (e.g. the shared-quantizer ablation without them): the pooled term alone
    alone, parts = L.semantic_distillation(None, None, pool, pool_t)
    assert alone.item() == pytest.approx(1.0 - 2**-0.5, abs=1e-6) and "sem_token_mse" not in parts


def test_cosine_is_averaged_over_tokens_and_batch():
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])  # (2, 2, 2)
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # cosines 1, 0, 1, 1/sqrt 2
    _, cos = L.mse_and_cosine(a, b)
    assert cos.item() == pytest.approx((1 + 0 + 1 + 2**-0.5) / 4)


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-3.0, 1.0])
    # lrelu(1 - real) = [-0.01, 1], lrelu(1 + fake) = [-0.02, 2] with the release's slope 0.01
    assert L.discriminator_hinge_loss(real, fake).item() == pytest.approx(0.5 * (0.495 + 0.99))
    assert L.discriminator_hinge_loss(real, fake, slope=0.0).item() == pytest.approx(0.5 * (0.5 + 1.0))
    assert L.adversarial_loss(fake).item() == pytest.approx(1.0)


def test_commitment_counts_a_shared_quantizer_once():
    pix = SimpleNamespace(commitment=torch.tensor(0.2))
    assert L.commitment_terms(pix, SimpleNamespace(commitment=torch.tensor(0.3))).keys() == {"commit_pixel",
                                                                                            "commit_semantic"}
    assert L.commitment_terms(pix, pix).keys() == {"commit_pixel"}
    assert L.commitment_terms(pix, None).keys() == {"commit_pixel"}


# -------------------------------------------------------------------------------------- adaptive weight
def linear_decoder_case(v_scale: float):
    """x_hat = z W^T with W the 'last layer'; D(x) = x v; returns the pieces and the hand-computed ratio."""
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
    W = torch.randn(4, 3, generator=g, requires_grad=True)
    v = torch.randn(4, generator=g) * v_scale
    x_hat = z @ W.T  # (B, m)
    nll = F.mse_loss(x_hat, x)
    g_loss = L.adversarial_loss(x_hat @ v)
    zn, xn, Wn, vn = (t.detach().double().numpy() for t in (z, x, W, v))
    d_nll = 2.0 / xn.size * (zn @ Wn.T - xn).T @ zn  # dMSE/dW = 2/(B m) (x_hat - x)^T z
    d_g = -np.outer(vn, zn.sum(0)) / zn.shape[0]  # d(-mean_b x_hat_b . v)/dW = -(1/B) v (sum_b z_b)^T
    return nll, g_loss, W, np.linalg.norm(d_nll) / (np.linalg.norm(d_g) + 1e-4)


def test_adaptive_weight_matches_the_hand_computation():
    nll, g_loss, W, ratio = linear_decoder_case(1.0)
    assert 0.3 < ratio < 10  # the case sits inside the clamp
    got = L.adaptive_gan_weight(nll, g_loss, W)
    assert got.item() == pytest.approx(ratio, rel=1e-5)
    assert not got.requires_grad and W.grad is None  # autograd.grad: nothing accumulated into .grad


@pytest.mark.parametrize("v_scale, bound", [(1e4, 0.3), (1e-6, 10.0)])
def test_adaptive_weight_is_clamped_at_both_ends(v_scale, bound):
    nll, g_loss, W, ratio = linear_decoder_case(v_scale)
    assert not 0.3 <= ratio <= 10
    assert L.adaptive_gan_weight(nll, g_loss, W).item() == pytest.approx(bound)


def test_adaptive_weight_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    dec = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1))
    disc, z, x = small_disc(), torch.randn(2, 8, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1

    def weight(autocast: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            x_hat = dec(z)
            nll = L.reconstruction_loss(x_hat, x)
            g_loss = L.adversarial_loss(disc(x_hat))
            return L.adaptive_gan_weight(nll, g_loss, dec[2].weight, lo=1e-6, hi=1e6).item()  # unclamped

    fp32, bf16 = weight(False), weight(True)
    assert fp32 == pytest.approx(bf16, rel=0.05)


def test_adaptive_weight_needs_a_trainable_last_layer():
    nll, g_loss, W, _ = linear_decoder_case(1.0)
    with pytest.raises(ValueError, match="frozen"):
        L.adaptive_gan_weight(nll, g_loss, W.detach())


# ------------------------------------------------------------------------------------- tokenizer_loss
def test_tokenizer_loss_total_is_the_weighted_sum_of_its_terms(setup):
    gen, disc, images, targets = setup
    cfg = loss_preset("so400m-384")
    lp = SimpleNamespace(label="fake-lpips")
    perceptual = lambda a, b: 2 * F.l1_loss(a, b)  # noqa: E731 (stands in for LPIPS)
    out = gen(images)
    total, logs = L.tokenizer_loss(out, images, cfg, teacher=targets, perceptual=perceptual, discriminator=disc,
                                   last_layer=gen.decoder.conv_out.weight, stage=1, gan_weight=0.75)
    rec = F.mse_loss(out.reconstruction, images)
    assert logs["recon"].item() == pytest.approx(rec.item(), rel=1e-6)
    assert logs["perceptual"].item() == pytest.approx(2 * F.l1_loss(out.reconstruction, images).item(), rel=1e-6)
    assert logs["gan_g"].item() == pytest.approx(-disc(out.reconstruction).mean().item(), rel=1e-5)
    sem = 5 * (logs["sem_token_mse"] - logs["sem_token_cos"]) + (logs["sem_pool_mse"] - logs["sem_pool_cos"])
    assert logs["semantic"].item() == pytest.approx(sem.item(), rel=1e-6)
    expected = (5 * logs["recon"] + 1 * logs["perceptual"] + 5 * logs["commit_pixel"] + 5 * logs["commit_semantic"]
                + 1 * logs["semantic"] + 0.75 * logs["gan_adaptive_weight"] * logs["gan_g"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["total"].item() == pytest.approx(total.item()) and logs["gan_weight"].item() == 0.75
    assert all(not v.requires_grad for v in logs.values())
    status = L.term_status(cfg, 1, gan_weight=0.75, perceptual=lp)
    assert status["perceptual"] == "on (fake-lpips)" and status["gan"] == "on"


@pytest.mark.parametrize("stage, present, absent", [
    (0, {"recon", "commit_pixel", "commit_semantic", "semantic"}, {"gan_g", "gan_adaptive_weight"}),
    (2, {"semantic", "commit_semantic"}, {"recon", "commit_pixel", "gan_g"}),
])
def test_stages_switch_terms_off(setup, stage, present, absent):
    gen, disc, images, targets = setup
    cfg = loss_preset("tiny")  # no perceptual term
    out = gen(images)
    total, logs = L.tokenizer_loss(out, images, cfg, teacher=targets, discriminator=disc,
                                   last_layer=gen.decoder.conv_out.weight, stage=stage, gan_weight=0.75)
    assert present <= logs.keys() and not absent & logs.keys() and "perceptual" not in logs
    assert logs["gan_weight"].item() == 0.0
    status = L.term_status(cfg, stage, gan_weight=0.75)
    assert status["gan"] == f"off (stage {stage})" and status["perceptual"].startswith("off")


def test_missing_pieces_are_named(setup):
    gen, disc, images, targets = setup
    out = gen(images)
    with pytest.raises(ValueError, match="no perceptual module"):
        L.tokenizer_loss(out, images, loss_preset("so400m-384"), teacher=targets)
    cfg = loss_preset("tiny")
    with pytest.raises(ValueError, match="no teacher targets"):
        L.tokenizer_loss(out, images, cfg)
    with pytest.raises(ValueError, match="no discriminator"):
        L.tokenizer_loss(out, images, cfg, teacher=targets, gan_weight=0.75)
    with pytest.raises(ValueError, match="last_layer"):
        L.tokenizer_loss(out, images, cfg, teacher=targets, discriminator=disc, gan_weight=0.75)


def test_generator_and_discriminator_steps_do_not_touch_each_others_grads(setup):
    gen, disc, images, targets = setup
    cfg = loss_preset("tiny")
    out = gen(images)
    total, _ = L.tokenizer_loss(out, images, cfg, teacher=targets, discriminator=disc,
                                last_layer=gen.decoder.conv_out.weight, gan_weight=0.75)
    total.backward()
    assert all(g is None for g in grads(disc).values())  # D stays untouched by the generator's backward
    assert all(g is not None for g in grads(gen).values())
    before = grads(gen)
    d_loss, d_logs = L.discriminator_loss(disc, images, out.reconstruction, cfg, weight=1.0)
    d_loss.backward()
    assert all(g is not None for g in grads(disc).values())
    after = grads(gen)
    assert all(torch.equal(before[n], after[n]) for n in before)  # ...and the generator by D's
    assert set(d_logs) == {"disc_loss", "disc_logits_real", "disc_logits_fake", "disc_weight"}


def test_discriminator_loss_by_hand_on_a_constant_critic():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.tensor(0.5))

        def forward(self, x):
            return self.c * torch.ones(x.shape[0], 1, 2, 2)

    images = torch.zeros(3, 3, 8, 8)
    loss, logs = L.discriminator_loss(Constant(), images, images, L.LossConfig(), weight=0.75)
    assert logs["disc_loss"].item() == pytest.approx(0.5 * (0.5 + 1.5))  # lrelu(1-0.5), lrelu(1+0.5)
    assert loss.item() == pytest.approx(0.75 * 1.0)


def test_teacher_gets_no_gradients_through_the_real_model():
    from dualtoken_lite.model.config import model_preset
    from dualtoken_lite.model.dualtoken import DualToken

    torch.manual_seed(0)
    model = DualToken(model_preset("tiny"))
    teacher = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    targets = L.targets_from_teacher(teacher, images, model.cfg.semantic_layer)
    assert not targets.hidden.requires_grad and not targets.pooled.requires_grad
    total, logs = L.tokenizer_loss(model(images), images, loss_preset("tiny"), teacher=targets, stage=1)
    total.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert model.encoder.trunk.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is not None for p in model.semantic_proj.parameters())  # the student does learn
    assert torch.isfinite(logs["semantic"])


@pytest.mark.parametrize("gan", [False, True])
def test_accumulated_micro_batches_equal_one_big_batch(setup, gan):
    gen, disc, images, targets = setup
    cfg = loss_preset("tiny")
    kw = dict(discriminator=disc, gan_weight=0.75 if gan else 0.0, adaptive_weight=2.0)  # one g_w per step

    total, _ = L.tokenizer_loss(gen(images), images, cfg, teacher=targets, **kw)
    total.backward()
    d_loss, _ = L.discriminator_loss(disc, images, gen(images).reconstruction, cfg)
    d_loss.backward()
    big_g, big_d = grads(gen), grads(disc)
    gen.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    k = 2
    for part in range(k):
        sl = slice(2 * part, 2 * part + 2)
        sub = L.TeacherTargets(targets.hidden[sl], targets.pooled[sl])
        total, _ = L.tokenizer_loss(gen(images[sl]), images[sl], cfg, teacher=sub, **kw)
        (total / k).backward()
        d_loss, _ = L.discriminator_loss(disc, images[sl], gen(images[sl]).reconstruction, cfg)
        (d_loss / k).backward()
    for name, g in grads(gen).items():
        torch.testing.assert_close(g, big_g[name], rtol=1e-5, atol=1e-7)
    for name, g in grads(disc).items():
        torch.testing.assert_close(g, big_d[name], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ config
def test_paper_preset_holds_spec_values():
    c = loss_preset("so400m-384")
    assert (c.recon_kind, c.recon_weight, c.perceptual_weight) == ("mse", 5.0, 1.0)
    assert (c.commit_pixel_weight, c.commit_semantic_weight) == (5.0, 5.0)
    assert (c.sem_weight, c.sem_token_weight, c.sem_pooled_weight) == (1.0, 5.0, 1.0)
    assert (c.adaptive_min, c.adaptive_max, c.adaptive_eps) == (0.3, 10.0, 1e-4)
    assert (c.gan_gen_weight, c.disc_loss_weight, c.disc_loss_weight_first_epoch) == (0.75, 0.75, 1.0)
    assert (c.disc_lr, c.disc_betas, c.disc_channels, c.disc_hinge_slope) == (7.2e-5, (0.5, 0.9), 64, 0.01)


def test_tiny_preset_and_overrides():
    assert loss_preset("tiny").perceptual_weight == 0.0
    c = loss_preset("tiny", {"sem_weight": 2, "disc_betas": [0.0, 0.99]})
    assert c.sem_weight == 2.0 and isinstance(c.sem_weight, float) and c.disc_betas == (0.0, 0.99)
    assert loss_preset("tiny").sem_weight == 1.0  # presets are copied, never mutated
    with pytest.raises(ValueError, match=r"no field\(s\) \['sem_wieght'\]"):
        loss_preset("tiny", {"sem_wieght": 2})
    with pytest.raises(ValueError, match="adaptive clamp"):
        loss_preset("tiny", {"adaptive_min": 20.0})
    with pytest.raises(ValueError, match="unknown preset"):
        loss_preset("huge")
