"""DualToken's training objective as named pure functions of one step (SPEC §3).

Generator side (the tokenizer), with x, x_hat in [-1, 1] and T the frozen teacher:

    L = w_rec * MSE(x_hat, x) + w_lp * LPIPS(x_hat, x)                                   reconstruction
      + w_cp * commit_pixel + w_cs * commit_semantic                                      commitment
      + s * ( 5 * [MSE(h, T.h) - cos(h, T.h)] + 1 * [MSE(pool, T.pool) - cos(pool, T.pool)] )  semantic
      + w_gan * g_w * (-mean D(x_hat))                                                    adversarial
    g_w = clamp(||dL_nll/dW|| / (||dL_G/dW|| + 1e-4), 0.3, 10),  W = decoder.conv_out.weight,
    L_nll = MSE + w_lp * LPIPS                                                           (VQGAN's balance)

Discriminator side: w_disc * 0.5 * (mean lrelu(1 - D(x)) + mean lrelu(1 + D(sg[x_hat]))).

Every weight and constant lives in ``LossConfig`` (presets ``paper`` and ``tiny``); which terms are on comes
from the stage (``stages.py``) and the GAN weight from the schedule (``gan_schedule.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import teacher_targets as backbone_teacher_targets
from .stages import StageSpec, get_stage


@dataclass
class LossConfig:
    """Weights and constants of every loss term and of the discriminator (SPEC §3, §4)."""

    # reconstruction
    recon_kind: str = "mse"  # pixel loss on [-1, 1] images: "mse" (paper) or "l1"
    recon_weight: float = 5.0  # w_rec, weight of the pixel loss (paper: 5)
    perceptual_weight: float = 1.0  # w_lp, weight of LPIPS-VGG (paper: 1); 0 = no perceptual term, no VGG built
    vgg_weights: str | None = None  # torchvision's vgg16-397923af.pth; None = look in torch.hub.get_dir()/checkpoints
    allow_random_lpips: bool = False  # opt in to a random VGG backbone when no weights exist (logged as such)
    # commitment (each RVQOutput.commitment is the unweighted mean over depths of ||z - sum_{k<=d} q_k||^2)
    commit_pixel_weight: float = 5.0  # w_cp, pixel branch (paper: 5)
    commit_semantic_weight: float = 5.0  # w_cs, semantic branch (paper: 5)
    # semantic distillation against the frozen teacher
    sem_weight: float = 1.0  # s, multiplier of the whole semantic loss (release flag --sem_weight, 1)
    sem_token_weight: float = 5.0  # weight of [MSE - cos] on the semantic-layer tokens (B, N, C) (paper: 5)
    sem_pooled_weight: float = 1.0  # weight of [MSE - cos] on the pooled MAP-head embedding (B, E) (paper: 1)
    # adversarial, generator side
    gan_gen_weight: float = 0.75  # w_gan after the switch-on epoch (release: d_weight = 0.75)
    gan_gen_weight_first_epoch: float = 0.75  # w_gan during the switch-on epoch (release: 0.75 as well)
    adaptive_min: float = 0.3  # lower clamp of the adaptive weight g_w (release: 0.3)
    adaptive_max: float = 10.0  # upper clamp of g_w (release: 10)
    adaptive_eps: float = 1e-4  # eps in ||dL_nll|| / (||dL_G|| + eps) (VQGAN: 1e-4)
    adaptive_recon_weight: float = 1.0  # weight of the pixel loss inside L_nll (release: 1, not w_rec)
    # (the GAN's timing, start epoch/step and restart period, is the run's: TrainConfig + gan_schedule)
    # discriminator
    disc_loss_weight: float = 0.75  # w_disc after the switch-on epoch (release: 0.75)
    disc_loss_weight_first_epoch: float = 1.0  # w_disc during the switch-on epoch (release: 1)
    disc_hinge_slope: float = 0.01  # negative slope of lrelu in the hinge loss (release: F.leaky_relu's 0.01)
    disc_channels: int = 64  # base width of the PatchDiscriminator (paper: 64 -> 1,729,409 parameters)
    disc_layers: int = 3  # residual blocks of the discriminator (paper: 3 -> logits at h/8)
    disc_lr: float = 7.2e-5  # Adam learning rate of D (release: the generator's --lr, 7.2e-5)
    disc_betas: tuple[float, float] = (0.5, 0.9)  # Adam betas of D (release: 0.5, 0.9)
    disc_weight_decay: float = 0.0  # Adam weight decay of D (release: 0)
    disc_warmup_epochs: float = 0.5  # linear warmup of D's lr from 0, in epochs after each (re)start (release)
    disc_min_lr: float = 4e-5  # floor of D's cosine lr decay (release: 4e-5)
    name: str = "paper"  # the preset this config started from (for logs)


LOSS_PRESETS: dict[str, LossConfig] = {
    "paper": LossConfig(name="paper"),
    # tiny, 64 px on a CPU: no perceptual term by default. LPIPS needs torchvision's ImageNet VGG16 weights,
    # which cannot be downloaded offline, and at 64 px VGG's deepest LPIPS features are 4x4 maps, far below
    # the 64-256 px patches LPIPS was calibrated on. A narrower discriminator (32 base channels, 434,625
    # parameters, 8x8 logits at 64 px) suits the small decoder. All other weights are the paper's.
    "tiny": LossConfig(name="tiny", perceptual_weight=0.0, disc_channels=32),
}
LOSS_PRESETS["so400m-384"] = LOSS_PRESETS["paper"]  # the model presets' names, so a run's preset finds its losses
LOSS_PRESETS["so400m-256"] = LOSS_PRESETS["paper"]


def loss_preset(name: str, overrides: dict | None = None) -> LossConfig:
    """A fresh, validated copy of a named preset ('paper', 'tiny', or a model preset's name) with overrides."""
    if name not in LOSS_PRESETS:
        raise ValueError(f"unknown loss preset {name!r}; choose one of {sorted(LOSS_PRESETS)}")
    cfg = copy.deepcopy(LOSS_PRESETS[name])
    known = {f.name: f for f in fields(LossConfig)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"LossConfig has no field {key!r}; known fields: {sorted(known)}")
        current = getattr(cfg, key)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(current, tuple) and isinstance(value, list | tuple):
            value = tuple(float(v) for v in value)
        setattr(cfg, key, value)
    return validate_loss_config(cfg)


def validate_loss_config(cfg: LossConfig) -> LossConfig:
    """Check a loss config before training; raise ValueError naming the field, the value and the fix."""
    if cfg.recon_kind not in ("mse", "l1"):
        raise ValueError(f"recon_kind={cfg.recon_kind!r} must be 'mse' (paper) or 'l1'")
    for name in ("recon_weight", "perceptual_weight", "commit_pixel_weight", "commit_semantic_weight",
                 "sem_weight", "sem_token_weight", "sem_pooled_weight", "gan_gen_weight",
                 "gan_gen_weight_first_epoch", "disc_loss_weight", "disc_loss_weight_first_epoch"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 0 (0 turns the term off)")
    if not 0 < cfg.adaptive_min <= cfg.adaptive_max:
        raise ValueError(
            f"adaptive clamp [{cfg.adaptive_min}, {cfg.adaptive_max}] must satisfy 0 < min <= max (paper 0.3, 10)"
        )
    if cfg.adaptive_eps <= 0:
        raise ValueError(f"adaptive_eps={cfg.adaptive_eps} must be > 0 (VQGAN: 1e-4)")
    if cfg.disc_channels < 32 or cfg.disc_channels % 32:
        raise ValueError(f"disc_channels={cfg.disc_channels} must be a positive multiple of 32 (GroupNorm 32)")
    if cfg.disc_layers < 1:
        raise ValueError(f"disc_layers={cfg.disc_layers} must be >= 1 (paper: 3)")
    if len(cfg.disc_betas) != 2 or not all(0 <= b < 1 for b in cfg.disc_betas):
        raise ValueError(f"disc_betas={cfg.disc_betas} must be two numbers in [0, 1) (paper: 0.5, 0.9)")
    return cfg


# ----------------------------------------------------------------------------------------------- pure terms
def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Pixel loss between x_hat and x (B, 3, h, w) in [-1, 1]: mean squared ('mse') or absolute ('l1') error."""
    if x_hat.shape != x.shape:
        raise ValueError(f"reconstruction {tuple(x_hat.shape)} and image {tuple(x.shape)} differ in shape")
    x_hat, x = x_hat.float(), x.float()  # fp32 even under bf16 autocast
    if kind == "mse":
        return F.mse_loss(x_hat, x)
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    raise ValueError(f"recon_kind={kind!r} must be 'mse' or 'l1'")


def mse_and_cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE over all elements and cosine similarity over the last dim, averaged over every other dim."""
    if a.shape != b.shape:
        raise ValueError(f"student {tuple(a.shape)} and teacher {tuple(b.shape)} features differ in shape")
    a, b = a.float(), b.float()
    return F.mse_loss(a, b), F.cosine_similarity(a, b, dim=-1).mean()


def semantic_distillation(
    h: torch.Tensor | None,
    h_teacher: torch.Tensor | None,
    pooled: torch.Tensor | None,
    pooled_teacher: torch.Tensor | None,
    token_weight: float = 5.0,
    pooled_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """token_weight * [MSE(h, T.h) - cos(h, T.h)] + pooled_weight * [MSE(pool, T.pool) - cos(pool, T.pool)].

    h: (B, N, C) post-quant semantic tokens; pooled: (B, E). A student tensor that is None (no semantic
    branch) drops its term. Teacher tensors are detached here, so the teacher can never get a gradient.
    """
    parts: dict[str, torch.Tensor] = {}
    total = None
    for name, student, target, weight in (("token", h, h_teacher, token_weight),
                                          ("pool", pooled, pooled_teacher, pooled_weight)):
        if student is None:
            continue
        if target is None:
            raise ValueError(f"the model returned semantic {name} features but the teacher targets have none")
        mse, cos = mse_and_cosine(student, target.detach())
        parts[f"sem_{name}_mse"], parts[f"sem_{name}_cos"] = mse, cos
        term = weight * (mse - cos)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("semantic distillation needs semantic tokens or a pooled embedding; the model has neither")
    return total, parts


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """L_G = -mean D(x_hat): the generator raises the critic's score of its reconstructions."""
    return -logits_fake.float().mean()


def discriminator_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """0.5 * (mean lrelu(1 - D(x)) + mean lrelu(1 + D(x_hat))): the release's hinge with a leaky floor."""
    real = F.leaky_relu(1.0 - logits_real.float(), slope).mean()
    fake = F.leaky_relu(1.0 + logits_fake.float(), slope).mean()
    return 0.5 * (real + fake)


def adaptive_gan_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    lo: float = 0.3,
    hi: float = 10.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN's balance g_w = ||dL_nll/dW|| / (||dL_G/dW|| + eps) at the decoder's last weight W, clamped, detached.

    Both gradients come from ``torch.autograd.grad`` (nothing is accumulated into ``.grad``; the graph is kept
    for the real backward). Norms are taken in fp32, so the value is right under bf16 autocast too.
    """
    if not last_layer.requires_grad:
        raise ValueError(
            "the adaptive GAN weight needs the decoder's last-layer weight to require grad; the decoder is "
            "frozen in this stage, so turn the GAN off (stage 2 does) or unfreeze decoder.conv_out"
        )
    (g_nll,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    ratio = torch.linalg.vector_norm(g_nll.float()) / (torch.linalg.vector_norm(g_gan.float()) + eps)
    return ratio.clamp(lo, hi).detach()


def commitment_terms(pixel, semantic) -> dict[str, torch.Tensor]:
    """The unweighted commitment of each branch, from the RVQOutputs (semantic None or the pixel one: skipped)."""
    terms = {"commit_pixel": pixel.commitment.float()}
    if semantic is not None and semantic is not pixel:  # shared-quantizer ablation: count the codebook once
        terms["commit_semantic"] = semantic.commitment.float()
    return terms


# ------------------------------------------------------------------------------------------ teacher targets
@dataclass
class TeacherTargets:
    """What the frozen teacher says about a batch: its semantic-layer tokens and its pooled embedding."""

    hidden: torch.Tensor | None  # (B, N, C) teacher output of block semantic_layer (None: no semantic branch)
    pooled: torch.Tensor  # (B, E) teacher MAP-head embedding


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen copy of the starting vision tower: deep copy, eval mode, no parameter requires grad."""
    teacher = copy.deepcopy(module).eval()
    teacher.requires_grad_(False)
    return teacher


def targets_from_teacher(teacher: nn.Module, images: torch.Tensor, semantic_layer: int) -> TeacherTargets:
    """Run the frozen teacher (a VisionTower or timm trunk) without grad: block ``semantic_layer`` + the pool."""
    hidden, pooled = backbone_teacher_targets(teacher, images, semantic_layer)  # (B, N, C), (B, E)
    return TeacherTargets(hidden=hidden, pooled=pooled)


# ----------------------------------------------------------------------------------------- one step's loss
def generator_loss(
    out,
    images: torch.Tensor,
    cfg: LossConfig,
    *,
    teacher: TeacherTargets | None = None,
    perceptual: nn.Module | None = None,
    discriminator: nn.Module | None = None,
    last_layer: torch.Tensor | None = None,
    stage: int | StageSpec = 1,
    gan_weight: float = 0.0,
    adaptive_weight: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total generator loss of one (micro-)batch and every term, detached, for logging.

    out: a DualTokenOutput (reconstruction (B, 3, h, w), semantic_features (B, N, C) or None, pooled (B, E),
    pixel / semantic RVQOutputs); images: (B, 3, h, w) in [-1, 1]. A term is on when the stage declares it and
    its weight is > 0; terms that are off are absent from the dict (``term_status`` says why). The adversarial
    term is on when the stage allows it, ``gan_weight`` (from ``GanSchedule.gan_weight``) is > 0 and a
    discriminator is given; its gradient reaches x_hat but never D's parameters. ``adaptive_weight`` overrides
    g_w (e.g. one value per optimizer step under gradient accumulation); otherwise it is computed at
    ``last_layer`` (the decoder's ``conv_out.weight``). Under accumulation, backpropagate ``total / k``.
    """
    spec = get_stage(stage)
    on = term_switches(cfg, spec, gan_weight)
    terms: dict[str, torch.Tensor] = {}
    x_hat = out.reconstruction  # (B, 3, h, w)
    total = torch.zeros((), device=images.device)
    nll = None
    if on["recon"] or on["gan"]:
        rec = reconstruction_loss(x_hat, images, cfg.recon_kind)
        terms["recon"] = rec
        nll = cfg.adaptive_recon_weight * rec
        if on["recon"]:
            total = total + cfg.recon_weight * rec
    if on["perceptual"]:
        if perceptual is None:
            raise ValueError(
                f"perceptual_weight={cfg.perceptual_weight} but no perceptual module was given; build one with "
                "perceptual.Perceptual(cfg.vgg_weights, cfg.allow_random_lpips) or set perceptual_weight=0"
            )
        lp = perceptual(x_hat, images)
        terms["perceptual"] = lp
        total = total + cfg.perceptual_weight * lp
        nll = nll + cfg.perceptual_weight * lp if nll is not None else cfg.perceptual_weight * lp
    commits = commitment_terms(out.pixel, out.semantic)
    for name, weight in (("commit_pixel", cfg.commit_pixel_weight), ("commit_semantic", cfg.commit_semantic_weight)):
        if on[name] and name in commits:
            terms[name] = commits[name]
            total = total + weight * commits[name]
    has_semantic = out.semantic_features is not None or out.pooled is not None
    if on["semantic"] and has_semantic:
        if teacher is None:
            raise ValueError("the semantic loss is on but no teacher targets were given (see targets_from_teacher)")
        sem, parts = semantic_distillation(out.semantic_features, teacher.hidden, out.pooled, teacher.pooled,
                                           cfg.sem_token_weight, cfg.sem_pooled_weight)
        terms.update(parts)
        terms["semantic"] = sem
        total = total + cfg.sem_weight * sem
    if on["gan"]:
        if discriminator is None:
            raise ValueError(f"gan_weight={gan_weight} at stage {spec.index} but no discriminator was given")
        logits_fake = _call_without_param_grads(discriminator, x_hat)  # (B, 1, h/8, w/8)
        g = generator_adversarial_loss(logits_fake)
        if adaptive_weight is None:
            if last_layer is None:
                raise ValueError("pass last_layer=model.decoder.conv_out.weight (or adaptive_weight) for the GAN")
            adaptive_weight = adaptive_gan_weight(nll, g, last_layer, cfg.adaptive_min, cfg.adaptive_max,
                                                  cfg.adaptive_eps)
        g_w = torch.as_tensor(adaptive_weight, dtype=torch.float32, device=images.device).detach()
        terms["gan_g"] = g
        terms["gan_adaptive_weight"] = g_w
        terms["gan_logits_fake"] = logits_fake.float().mean()
        total = total + gan_weight * g_w * g
    terms["gan_weight"] = torch.tensor(float(gan_weight if on["gan"] else 0.0), device=images.device)
    logs = {k: v.detach() for k, v in terms.items()}
    logs["total"] = total.detach()
    return total, logs


def term_switches(cfg: LossConfig, stage: int | StageSpec, gan_weight: float = 0.0) -> dict[str, bool]:
    """Which terms are on: declared by the stage and given a weight > 0 (the GAN also needs gan_weight > 0)."""
    spec = get_stage(stage)
    weights = {"recon": cfg.recon_weight, "perceptual": cfg.perceptual_weight,
               "commit_pixel": cfg.commit_pixel_weight, "commit_semantic": cfg.commit_semantic_weight,
               "semantic": cfg.sem_weight, "gan": gan_weight}
    return {name: name in spec.terms and weight > 0 for name, weight in weights.items()}


def term_status(cfg: LossConfig, stage: int | StageSpec, gan_weight: float = 0.0, perceptual=None) -> dict[str, str]:
    """A label per term for the run log: 'on', or 'off (<reason>)'; the perceptual one names its backbone."""
    spec = get_stage(stage)
    on = term_switches(cfg, spec, gan_weight)
    status = {}
    for name, is_on in on.items():
        if is_on:
            status[name] = "on"
        elif name not in spec.terms:
            status[name] = f"off (stage {spec.index})"
        else:
            status[name] = "off (gan schedule)" if name == "gan" else "off (weight 0)"
    if on["perceptual"] and perceptual is not None:
        status["perceptual"] = f"on ({getattr(perceptual, 'label', type(perceptual).__name__)})"
    return status


# ------------------------------------------------------------------------------------- discriminator step
def discriminator_loss(
    discriminator: nn.Module,
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    cfg: LossConfig,
    weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``weight`` x the hinge loss of D on real images and DETACHED reconstructions, and its logs.

    The generator gets no gradient from this loss (x_hat is detached); backpropagate the returned loss
    (divided by k under gradient accumulation) and step D's optimizer. ``weight`` is
    ``GanSchedule.disc_loss_weight(step)`` (1 in the switch-on epoch, 0.75 after, in the release).
    """
    batch = images.shape[0]
    both = torch.cat([images.detach(), reconstruction.detach()])  # (2B, 3, h, w); GroupNorm is per sample
    logits = discriminator(both)  # (2B, 1, h/8, w/8)
    logits_real, logits_fake = logits[:batch], logits[batch:]
    loss = discriminator_hinge_loss(logits_real, logits_fake, cfg.disc_hinge_slope)
    logs = {"disc_loss": loss.detach(), "disc_logits_real": logits_real.detach().float().mean(),
            "disc_logits_fake": logits_fake.detach().float().mean(), "disc_weight": torch.tensor(float(weight), device=images.device)}
    return weight * loss, logs


def _call_without_param_grads(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with its parameters detached: gradients reach x but never the module's ``.grad``."""
    module = getattr(module, "module", module)  # unwrap DDP: the generator pass must not touch D's reducer
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))
