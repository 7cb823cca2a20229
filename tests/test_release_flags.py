"""The released code's command line: each of its flags means here what it meant there, or is refused naming ours;
a paper-scale run never starts from a random tower and a random teacher unless asked to."""

from __future__ import annotations

import pytest
import torch
import webdataset as wds
from release_layout import random_release_state

from dualtoken_lite.model.release import model_from_release
from dualtoken_lite.settings import ConfigError
from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.shards import encode_png
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.setup import build_trainer

FAST = ["--preset", "tiny", "--teacher", "backbone", "--batch_size", "4", "--threads", "1",
        "--model.pixel_quantizer.codebook_size", "64", "--model.semantic_quantizer.codebook_size", "64",
        "--eval-data", "none", "--max_steps", "2"]


@pytest.fixture(scope="module")
def train_shard(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("shard") / "train.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(16):
            image, meta = make_sample(i, "train")
            sink.write({"__key__": f"t{i:04d}", "png": encode_png(image), "cls": str(meta["label"]).encode()})
    return str(path)


@pytest.mark.parametrize("start", [["--model", "model_config_siglip_384_rvq8"], ["--model", "model_config_siglip_256_rvq4_32d"],
                                   ["--preset", "so400m-384"], ["--preset", "so400m-256"]])
def test_a_paper_run_without_weights_is_refused_naming_the_flag(start):
    with pytest.raises(ConfigError, match=r"--model\.backbone\.pretrained.*'webli'.*hf:google/siglip2.*random"):
        parse_args([*start, "--train-data", "x-{0..3}.tar"])
    with pytest.raises(ConfigError, match="names no starting weights"):  # a stage-2 start does not supply a teacher
        parse_args([*start, "--train-data", "x.tar", "--load_from", "runs/stage1/model"])


@pytest.mark.parametrize("weights", ["random", "webli", "hf:google/siglip2-so400m-patch14-384"])
def test_a_paper_run_with_weights_or_random_on_purpose_parses(weights):
    cfg = parse_args(["--model", "model_config_siglip_384_rvq8", "--train-data", "x.tar",
                      "--model.backbone.pretrained", weights])
    assert cfg.preset == "so400m-384" and cfg.model.backbone.pretrained == weights
    assert parse_args(["--preset", "so400m-384-siglip2", "--train-data", "x.tar"]).model.backbone.pretrained \
        == "hf:google/siglip2-so400m-patch14-384"


def test_release_flags_map_to_our_settings():
    release = parse_args("--precision amp_bf16 --accum-freq 3 --grad-clip-norm 1.5 --seed 7 --resume latest "
                         "--lr-scheduler const --report-to tensorboard".split())
    assert (release.bf16, release.grad_accum, release.grad_clip_norm, release.seed) == (True, 3, 1.5, 7)
    assert (release.resume, release.min_lr_ratio, release.tensorboard) == ("auto", 1.0, True)
    assert parse_args(["--load_from", "runs/s1/model"]).init_from == "runs/s1/model"
    assert parse_args(["--precision", "fp32"]).bf16 is False
    assert parse_args(["--lr-scheduler", "cosine"]).min_lr_ratio == parse_args([]).min_lr_ratio
    assert parse_args(["--report-to", "none"]).tensorboard is False
    assert parse_args(["--resume", "runs/x"]).resume == "runs/x"


@pytest.mark.parametrize("flag, value, ours", [
    ("--precision", "fp16", "--precision amp_bf16"), ("--precision", "pure_bf16", "--bf16 true"),
    ("--lr-scheduler", "const-cooldown", "--min_lr_ratio"), ("--report-to", "wandb", "--report-to tensorboard"),
    ("--imagenet-val", "/data/imagenet/val", "python -m dualtoken_lite evaluate RUN --data IMAGENET_VAL --zero-shot"),
])
def test_release_flags_we_do_not_have_are_refused_naming_ours(flag, value, ours):
    with pytest.raises(ConfigError, match=f"{flag} {value}: .*{ours}"):
        parse_args([flag, value])


def test_a_clip_norm_that_is_not_positive_is_refused():
    with pytest.raises(ConfigError, match="grad_clip_norm=0 must be > 0"):
        parse_args(["--grad-clip-norm", "0"])


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_grad_clip_norm_bounds_the_gradient_the_optimizer_sees(train_shard, tmp_path):
    seen = []
    for clip in (None, "1e-3"):
        cfg = parse_args([*FAST, "--train-data", train_shard, "--out", str(tmp_path), "--deterministic", "true",
                          *(["--grad-clip-norm", clip] if clip else [])])
        tr = build_trainer(cfg, dist_utils.setup("cpu"))
        tr.tokenizer_micro_step(tr.model, next(tr.batches()), scale=1.0)
        adamw_step = tr.optimizer.step

        def step_seeing_the_gradient(tr=tr, adamw_step=adamw_step):
            seen.append(float(torch.nn.utils.get_total_norm([p.grad for p in tr.model.parameters()
                                                               if p.grad is not None])))
            adamw_step()

        tr.optimizer.step = step_seeing_the_gradient
        tr.optimizer_step()
    unclipped, clipped = seen
    assert unclipped > 1e-2, "the unclipped gradient is too small for this test to mean anything"
    assert clipped == pytest.approx(1e-3, rel=1e-3) and tr.last_grad_norm == pytest.approx(unclipped, rel=1e-4)


def test_seed_sets_the_initial_weights(train_shard, tmp_path):
    def first_weights(seed: str) -> torch.Tensor:
        cfg = parse_args([*FAST, "--train-data", train_shard, "--out", str(tmp_path), "--seed", seed])
        return build_trainer(cfg, dist_utils.setup("cpu")).model.pixel_proj.lin.weight.detach().clone()

    assert torch.equal(first_weights("3"), first_weights("3"))
    assert not torch.equal(first_weights("3"), first_weights("4"))


# a tiny run with the release's structure and architecture: a shortcut tap, 32 GroupNorm groups, tanh GELU
RELEASE_SHAPED = ["--model.pixel_layer", "2", "--model.shortcut_layer", "1", "--model.decoder_norm_groups", "32",
                  "--model.backbone.activation", "gelu_tanh"]


def test_load_from_takes_a_release_checkpoint_file(train_shard, tmp_path):
    """The release's --load_from names its own .pt file: the run starts from those weights, converted."""
    cfg = parse_args([*FAST, *RELEASE_SHAPED, "--train-data", train_shard, "--out", str(tmp_path / "run")])
    state = random_release_state(cfg.model)
    torch.save({"state_dict": state}, tmp_path / "stage1.pt")
    cfg = parse_args([*FAST, *RELEASE_SHAPED, "--train-data", train_shard, "--out", str(tmp_path / "run"),
                      "--load_from", str(tmp_path / "stage1.pt")])
    tr = build_trainer(cfg, dist_utils.setup("cpu"))
    want, _, _ = model_from_release(state, model_cfg=cfg.model)
    for name, tensor in want.state_dict().items():
        assert torch.equal(tr.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("load_from", [False, True])
def test_the_gan_starts_with_its_epoch_when_the_run_starts_from_weights(train_shard, tmp_path, load_from):
    """The release: with --load_from the discriminator trains from the first step of gan_start_epoch, without it
    from the second half of that epoch."""
    cfg = parse_args([*FAST, *RELEASE_SHAPED, "--train-data", train_shard, "--out", str(tmp_path / "run")])
    torch.save({"state_dict": random_release_state(cfg.model)}, tmp_path / "stage1.pt")
    start = ["--load_from", str(tmp_path / "stage1.pt")] if load_from else []
    cfg = parse_args([*FAST, *RELEASE_SHAPED, "--train-data", train_shard, "--out", str(tmp_path / "run"),
                      "--gan_start_epoch", "1", "--max_steps", "20", *start])
    tr = build_trainer(cfg, dist_utils.setup("cpu"))
    S = tr.steps_per_epoch
    assert S >= 2, "an epoch of one step has no second half to tell the two starts apart"
    assert tr.adversary.schedule.start_step == S + (0 if load_from else (S + 1) // 2)
