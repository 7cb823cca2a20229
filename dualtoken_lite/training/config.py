"""One training run's settings: the ``TrainConfig`` dataclass and its validation (docs/method.md §4).

A ``TrainConfig`` holds everything a run needs: its own settings, the tokenizer (``model``, a ``ModelConfig``) and
the objective (``loss``, a ``LossConfig``). Named presets live in ``dualtoken_lite.training.presets``; the command line
(``training.arguments``) starts from one and applies overrides; ``validate_train`` checks the whole before any data
is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dualtoken_lite.losses.config import LossConfig, validate_loss_config
from dualtoken_lite.model.config import RANDOM_WEIGHTS, ModelConfig, validate
from dualtoken_lite.settings import ConfigError, require_at_least, require_finite, require_fraction


@dataclass
class TrainConfig:
    """One training run (docs/method.md §4 for the paper's values)."""

    preset: str = "tiny"  # the preset (dualtoken_lite.training.presets) this run started from
    out: str = "runs/tiny"  # run folder: config.json, metrics.jsonl, checkpoints/, images/, summary.json
    train_data: str = "tinyworld"  # "tinyworld" (the bundled set, made on first use), shard pattern(s) or a folder
    eval_data: str | None = "tinyworld-eval"  # held-out set for PSNR / accuracy; None = no evaluation
    train_num_samples: int | None = None  # samples per epoch (the epoch length of a webdataset); None = one pass
    epochs: int = 1  # passes over train_num_samples (or the data); max_steps, when set, wins
    max_steps: int | None = 1200  # optimizer steps in total; None = epochs * steps_per_epoch
    batch_size: int = 32  # images per process per micro-batch
    grad_accum: int = 1  # micro-batches summed into one optimizer step (quantizer EMA moves once per step)
    lr: float = 1e-3  # peak AdamW learning rate of the tokenizer (paper: 7.2e-5)
    beta1: float = 0.9  # AdamW beta1 (paper: 0.5)
    beta2: float = 0.99  # AdamW beta2 (paper: 0.9)
    adam_eps: float = 1e-8  # AdamW epsilon (paper: 1e-8)
    weight_decay: float = 1e-4  # on weights with ndim >= 2 only; none on biases, norms, embeddings (paper: 1e-4)
    grad_clip_norm: float | None = None  # clip the global gradient norm to this before each AdamW step (paper: none)
    warmup_steps: int = 50  # linear warmup before the cosine decay (paper: 10,000)
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    stage: int = 1  # 0, 1 or 2 (docs/method.md §3): what is frozen and which losses are on
    gan_start_epoch: int | None = None  # 0-based epoch in whose second half the discriminator starts (at its start
    #                                     when init_from is set, as the release's --load_from); None = no GAN
    gan_start_step: int | None = None  # the same in steps (wins over gan_start_epoch when both are set)
    restart_gan: int | None = None  # re-create the discriminator and its optimizer every N epochs after the start
    teacher: str = "shipped"  # distillation teacher: "shipped" (tiny world's, also the starting tower), "backbone"
    #                           (a frozen copy of the tower as built, e.g. pretrained SigLIP) or a teacher folder
    tower_init: str = "teacher"  # with teacher="shipped"/a folder: "teacher" = start the tower from the teacher's
    #                               weights; "scratch" = keep the random init (the teacher only distils)
    init_from: str | None = None  # start a new run from a model folder's weights (fresh optimizers): stage 1 -> 2
    resume: str | None = None  # continue a run: its folder, a checkpoints/step_* folder, or "auto" (= --out if any)
    overwrite: bool = False  # replace the run already in --out (without it, a start refuses to touch an existing run)
    seed: int = 0  # seeds python, numpy and torch on every rank (data order is derived from it too)
    deterministic: bool = False  # torch.use_deterministic_algorithms; with it, a resumed run equals an unbroken one
    device: str = "auto"  # "auto" (CUDA if available), "cpu" or "cuda"
    bf16: bool | None = None  # bf16 autocast; None = on with CUDA, off on the CPU; granted only where the device
    #                           computes bf16 natively (a CPU with AVX-512 or AMX), else fp32 (training/precision.py)
    workers: int = 0  # data-loader worker processes per rank
    threads: int | None = None  # torch CPU threads per process; None = torch's default
    # speed levers (benchmarks/step_speed.py measures each against the step with all of them off)
    fast_group_norm: bool = True  # the decoder's GroupNorm backward in closed form on its channels_last maps (CPU;
    #                                decoder.ChannelsLastGroupNorm): PyTorch's kernel is 2-4x slower in that layout;
    #                                the same math, so on
    fused_adamw: bool = True  # AdamW's fused kernel (one pass over all tensors instead of ~10 ops per tensor); the
    #                            same update up to float rounding; on because it is never slower
    compile_decoder: bool = False  # torch.compile the post-quant block and the decoder (inductor); off: its
    #                                 compile takes minutes on a 2-core CPU and pays back only in long runs, and
    #                                 on an AVX2-only CPU the compiled step measured slower (README, Benchmarks)
    onednn_linear: bool = True  # fp32 Linear layers on the CPU as 1x1 convolutions (model/onednn_linear.py): oneDNN
    #                             uses AVX-512 where MKL's sgemm takes AVX2 (AMD): 2x on an AMD EPYC's matmuls,
    #                             nothing on Intel (MKL runs AVX-512 there); the same products summed in another
    #                             order; no effect under bf16 autocast
    keep_freed_memory: bool = True  # CPU, glibc: malloc keeps freed activations for the next step instead of handing
    #                                  them back to the OS (training/allocator.py); no page faults, same results
    log_every: int = 20  # steps between metrics.jsonl lines (and the progress-bar postfix)
    image_every: int = 200  # steps between reconstruction grids written to images/
    eval_every: int = 400  # steps between held-out evaluations (0 = only at the end)
    eval_samples: int = 512  # held-out images per evaluation
    save_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 3  # the N most recent checkpoints are kept
    tensorboard: bool = False  # also write TensorBoard event files (needs the tensorboard package)
    model: ModelConfig = field(default_factory=ModelConfig)  # the tokenizer (model/config.py)
    loss: LossConfig = field(default_factory=LossConfig)  # every loss weight and constant (losses/config.py)


def check_starting_weights(cfg: TrainConfig) -> None:
    """Refuse a paper-scale run whose tower (and so its distillation teacher) would start random without being asked.

    A random SigLIP tower distilled towards a random copy of itself trains for days and teaches nothing (the release
    cannot start so: it loads its tower with ``SiglipModel.from_pretrained``, which fails without the weights).
    ``--model.backbone.pretrained random`` asks for it on purpose.
    """
    backbone = cfg.model.backbone
    if backbone.arch == "tiny" or backbone.pretrained is not None:
        return
    weights_elsewhere = (cfg.init_from or cfg.resume) and cfg.teacher != "backbone"
    if weights_elsewhere:
        return
    raise ConfigError(
        f"preset {cfg.preset!r} names no starting weights for its {backbone.arch} tower, so the tower and its "
        "teacher would both be random. Give them with --model.backbone.pretrained: 'webli' (open_clip SigLIP, the "
        "paper's), 'hf:google/siglip2-so400m-patch14-384' (transformers SigLIP2, the released code's; or "
        "--preset so400m-384-siglip2), or a local weights file/folder; or "
        f"--model.backbone.pretrained {RANDOM_WEIGHTS} to train from random weights on purpose"
    )


def validate_train(cfg: TrainConfig) -> TrainConfig:
    """Check a run's config before any data is read; raise ConfigError naming the value and the fix."""
    require_finite(cfg)  # --lr inf, --beta1 nan, ... anywhere in the run, the model or the losses
    validate(cfg.model)
    validate_loss_config(cfg.loss)
    positive = ("batch_size", "grad_accum", "epochs", "log_every", "keep_checkpoints", "eval_samples")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps={cfg.max_steps} must be >= 1 (or None to run epochs)")
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be > 0")
    if cfg.adam_eps <= 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"adam_eps={cfg.adam_eps} must be > 0 and min_lr_ratio={cfg.min_lr_ratio} in [0, 1]")
    require_at_least(cfg, ("image_every", "eval_every", "workers", "seed"), 0, note="0 = never / none")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads={cfg.threads} must be >= 1 (or leave it unset for torch's default)")
    require_fraction(cfg, ("beta1", "beta2"))
    if cfg.grad_clip_norm is not None and not cfg.grad_clip_norm > 0:
        raise ConfigError(f"grad_clip_norm={cfg.grad_clip_norm} must be > 0 (or None: no clipping)")
    check_starting_weights(cfg)
    if cfg.warmup_steps < 0 or cfg.weight_decay < 0:
        raise ConfigError(f"warmup_steps={cfg.warmup_steps} and weight_decay={cfg.weight_decay} must be >= 0")
    if cfg.stage not in (0, 1, 2):
        raise ConfigError(f"stage={cfg.stage}: DualToken has stages 0, 1 and 2 (docs/method.md §3)")
    if cfg.stage == 2 and cfg.model.semantic_layer is None:
        raise ConfigError("stage=2 trains the semantic branch only, but model.semantic_layer is None")
    if cfg.tower_init not in ("teacher", "scratch"):
        raise ConfigError(f"tower_init={cfg.tower_init!r}: use 'teacher' or 'scratch'")
    if cfg.resume and cfg.init_from:
        raise ConfigError("--resume continues a run and --init-from starts a new one: give only one")
    if not cfg.train_data:
        raise ConfigError("train_data is empty: give --train-data (shards like 'cc12m-{0000..2175}.tar' or a folder)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r}: use auto, cpu or cuda")
    return cfg
