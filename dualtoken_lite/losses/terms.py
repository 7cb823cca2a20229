"""DualToken's training objective as named pure functions of one step (docs/method.md §3).

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dualtoken_lite.losses.config import LossConfig
from dualtoken_lite.losses.stages import StageSpec, get_stage
from dualtoken_lite.model.backbone import teacher_targets as backbone_teacher_targets


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


def adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """L_G = -mean D(x_hat): the tokenizer raises the critic's score of its reconstructions."""
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


def targets_from_teacher(teacher: nn.Module, images: torch.Tensor, semantic_layer: int) -> TeacherTargets:
    """Run the frozen teacher (a VisionTower or timm trunk) without grad: block ``semantic_layer`` + the pool."""
    hidden, pooled = backbone_teacher_targets(teacher, images, semantic_layer)  # (B, N, C), (B, E)
    return TeacherTargets(hidden=hidden, pooled=pooled)


# ----------------------------------------------------------------------------------------- one step's loss
def tokenizer_loss(
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
    """The tokenizer's total loss of one (micro-)batch and every term, detached, for logging.

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
        g = adversarial_loss(logits_fake)
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

    The tokenizer gets no gradient from this loss (x_hat is detached); backpropagate the returned loss
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
    module = getattr(module, "module", module)  # unwrap DDP: the tokenizer's pass must not touch D's reducer
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))
