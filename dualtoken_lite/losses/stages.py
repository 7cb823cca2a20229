"""Training stages 0 / 1 / 2 as data: what is frozen and which loss terms are on (docs/method.md §3).

    stage 0  freeze the patch/position embeddings and blocks 1..semantic_layer; the pixel branch, the last
             blocks, the MAP head, projections, quantizers and decoder train; every loss but the GAN.
    stage 1  train everything (the text tower is not part of this model); every loss term, GAN included.
    stage 2  freeze the embeddings, blocks 1..shortcut_layer (paper: 1..4, the release's
             ``encoder.layers[0:layer_shortcut]``), the pixel projections, the pixel codebook (its EMA too, as the
             release intends) and the decoder; semantic losses only (distillation + semantic commitment).
             The release crashes here on wrong attribute names; this description names modules of our model.

A stage is a ``StageSpec`` (plain data); ``apply_stage`` turns it into ``requires_grad`` flags and returns a
summary of what is trainable, and ``stage_train_mode`` keeps codebooks a stage freezes from updating their EMA.
Block numbers in the prose are 1-indexed as in the paper; ``trunk.blocks[i]`` is block i + 1.
One semantic formula serves every stage (docs/method.md §3). The release also re-weighted it per stage (stage 0:
5 x the pooled term only; stage 2: token cosine + 5 x pooled); those are LossConfig overrides, not stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ALL_TERMS = frozenset({"recon", "perceptual", "commit_pixel", "commit_semantic", "semantic", "gan"})
PIXEL_MODULES = ("pixel_proj", "shortcut_proj", "pixel_post_proj", "post_quant_block", "decoder")


@dataclass(frozen=True)
class StageSpec:
    """One stage of training, declared: frozen parameter groups and the loss terms that are on."""

    index: int  # 0, 1 or 2
    summary: str  # one line for logs
    freeze_embeddings: bool  # patch embedding (and its conv) + position embedding
    freeze_blocks: str | None  # "through_semantic_layer" | "through_shortcut_layer" | None (see frozen_block_count)
    freeze_modules: tuple[str, ...]  # model attributes frozen whole (missing/None attributes are skipped)
    freeze_codebooks: tuple[str, ...]  # quantizers kept in eval mode (no EMA / dead-code updates)
    terms: frozenset[str]  # loss terms on (subset of ALL_TERMS)


STAGES: dict[int, StageSpec] = {
    0: StageSpec(
        index=0,
        summary="freeze embeddings + blocks 1..semantic_layer; all losses but the GAN",
        freeze_embeddings=True,
        freeze_blocks="through_semantic_layer",
        freeze_modules=(),
        freeze_codebooks=(),
        terms=ALL_TERMS - {"gan"},
    ),
    1: StageSpec(
        index=1,
        summary="train everything; all losses",
        freeze_embeddings=False,
        freeze_blocks=None,
        freeze_modules=(),
        freeze_codebooks=(),
        terms=ALL_TERMS,
    ),
    2: StageSpec(
        index=2,
        summary="freeze embeddings, blocks 1..shortcut_layer, pixel projections, pixel codebook, decoder; "
        "semantic losses only",
        freeze_embeddings=True,
        freeze_blocks="through_shortcut_layer",
        freeze_modules=PIXEL_MODULES + ("pixel_quantizer",),
        freeze_codebooks=("pixel_quantizer",),
        terms=frozenset({"semantic", "commit_semantic"}),
    ),
}


def get_stage(stage: int | StageSpec) -> StageSpec:
    """The StageSpec for a stage number (a StageSpec passes through)."""
    if isinstance(stage, StageSpec):
        return stage
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not a training stage; choose 0, 1 or 2 (docs/method.md §3)")
    return STAGES[stage]


def frozen_block_count(spec: StageSpec, cfg) -> int:
    """How many leading trunk blocks the stage freezes, from the model config (0 = none).

    "through_semantic_layer": blocks 1..semantic_layer (paper 26 of 27). "through_shortcut_layer": blocks
    1..shortcut_layer (paper 1..4, as the release freezes them), or 1..pixel_layer when the model has no shortcut
    tap: the blocks up to the pixel branch's lowest tap.
    """
    if spec.freeze_blocks is None:
        return 0
    if spec.freeze_blocks == "through_semantic_layer":
        if cfg.semantic_layer is None:
            raise ValueError(
                f"stage {spec.index} freezes blocks 1..semantic_layer but semantic_layer=None; "
                "this model has no semantic branch, so use stage 1"
            )
        return cfg.semantic_layer
    if spec.freeze_blocks == "through_shortcut_layer":
        return cfg.shortcut_layer if cfg.shortcut_layer is not None else cfg.pixel_layer  # tap 0: no block
    raise ValueError(f"unknown freeze_blocks={spec.freeze_blocks!r}")


@dataclass
class StageSummary:
    """What ``apply_stage`` did: parameter counts per group and the frozen groups, for the run log."""

    stage: int
    frozen_blocks: int  # leading trunk blocks frozen
    trainable: int  # parameters with requires_grad=True
    frozen: int  # parameters with requires_grad=False
    groups: dict[str, tuple[int, int]]  # group name -> (trainable, frozen) parameter counts
    terms: frozenset[str]  # loss terms on

    def __str__(self) -> str:
        lines = [f"stage {self.stage}: {self.trainable:,} trainable / {self.frozen:,} frozen parameters; "
                 f"terms on: {', '.join(sorted(self.terms))}"]
        for name, (t, f) in self.groups.items():
            lines.append(f"  {name:<22} trainable {t:>12,}  frozen {f:>12,}")
        return "\n".join(lines)


def apply_stage(model: nn.Module, stage: int | StageSpec) -> StageSummary:
    """Set ``requires_grad`` on every model parameter as the stage declares; return what was done.

    The frozen teacher is a separate module (``training.setup.build_teacher``); it is never part of ``model``.
    """
    spec = get_stage(stage)
    trunk = model.encoder.trunk
    n_blocks = frozen_block_count(spec, model.cfg)
    model.requires_grad_(True)  # start from "train everything" so stages can be applied in any order
    frozen: list[nn.Module | nn.Parameter] = []
    if spec.freeze_embeddings:
        frozen.append(trunk.patch_embed)
        if isinstance(getattr(trunk, "pos_embed", None), nn.Parameter):
            frozen.append(trunk.pos_embed)
    frozen.extend(trunk.blocks[:n_blocks])
    for name in spec.freeze_modules:
        module = getattr(model, name, None)
        if module is not None:
            frozen.append(module)
    for item in frozen:
        item.requires_grad_(False)
    return StageSummary(
        stage=spec.index,
        frozen_blocks=n_blocks,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        frozen=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        groups=_group_counts(model),
        terms=spec.terms,
    )


def stage_train_mode(model: nn.Module, stage: int | StageSpec) -> nn.Module:
    """``model.train()``, then eval mode for the codebooks the stage freezes (their EMA must not move)."""
    spec = get_stage(stage)
    model.train()
    for name in spec.freeze_codebooks:
        module = getattr(model, name, None)
        if module is not None:
            module.eval()
    return model


def _group_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, frozen) parameter counts per top-level child, the trunk split into embeddings/blocks/rest."""
    groups: dict[str, list[int]] = {}

    def add(name: str, p: nn.Parameter) -> None:
        g = groups.setdefault(name, [0, 0])
        g[0 if p.requires_grad else 1] += p.numel()

    for name, p in model.named_parameters():
        if name.startswith("encoder.trunk."):
            rest = name[len("encoder.trunk."):]
            if rest.startswith(("patch_embed", "pos_embed")):
                add("trunk.embeddings", p)
            elif rest.startswith("blocks."):
                add(f"trunk.block{int(rest.split('.')[1]) + 1}", p)
            else:
                add("trunk.head", p)  # final norm + MAP pooling head
        else:
            add(name.split(".")[0], p)
    return {k: (v[0], v[1]) for k, v in groups.items()}
