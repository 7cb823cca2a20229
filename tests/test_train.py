"""The trainer: resume after SIGKILL equals an unbroken run, accumulation equals a big batch, stages freeze,
configs fail before data is read, bad samples are counted, NaN stops cleanly, two processes agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file

from dualtoken_lite.settings import ConfigError
from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.shards import encode_png
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.loop import run
from dualtoken_lite.training.setup import build_trainer

ROOT = Path(__file__).resolve().parents[1]
# A small, fast run: tiny preset, small codebooks, its own tower as teacher, one thread.
FAST = ["--preset", "tiny", "--teacher", "backbone", "--batch_size", "4", "--threads", "1",
        "--model.pixel_quantizer.codebook_size", "64", "--model.semantic_quantizer.codebook_size", "64",
        "--log_every", "1", "--image_every", "0", "--eval_every", "0", "--eval_samples", "8",
        "--bf16", "false"]  # exact comparisons below: fp32


def _write_shard(path: Path, split: str, n: int, corrupt: tuple[int, ...] = ()) -> str:
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            image, meta = make_sample(i, split)
            png = b"not a png at all" if i in corrupt else encode_png(image)
            sink.write({"__key__": f"{split}-{i:05d}", "png": png, "cls": str(meta["label"]).encode()})
    return str(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shards")
    return {"train": _write_shard(root / "train.tar", "train", 64), "eval": _write_shard(root / "eval.tar", "eval", 16)}


def _args(shards, out, *extra) -> list[str]:
    return [*FAST, "--train-data", shards["train"], "--eval-data", shards["eval"], "--out", str(out), *extra]


def _cli(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    """The trainer's command line in a subprocess; ``fault`` goes through tests/train_with_fault.py's hooks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    entry = [str(Path(__file__).with_name("train_with_fault.py")), fault] if fault else ["-m", "dualtoken_lite.train"]
    return subprocess.run([sys.executable, *entry, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


# GAN on from step 2, checkpoints every 2 steps, deterministic kernels.
RESUME = ["--max_steps", "6", "--save_every", "2", "--gan_start_step", "2", "--deterministic", "true"]


@pytest.fixture(scope="module")
def unbroken(shards, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("unbroken")
    result = _cli(_args(shards, out, *RESUME))
    assert result.returncode == 0, result.stderr[-3000:]
    return _weights(out)


@pytest.mark.parametrize("fault", ["kill-after-step:5", "kill-in-save:4"])
def test_sigkill_then_resume_equals_the_unbroken_run(shards, unbroken, tmp_path, fault):
    killed = _cli(_args(shards, tmp_path, *RESUME), fault=fault)
    assert killed.returncode == -9, f"the fault hook did not fire: {killed.stderr[-2000:]}"
    assert not (tmp_path / "model").exists()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() in ("step_00000002", "step_00000004")
    resumed = _cli(_args(shards, tmp_path, *RESUME, "--resume", str(tmp_path)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights = _weights(tmp_path)
    assert weights.keys() == unbroken.keys()
    for name, tensor in unbroken.items():
        assert torch.equal(weights[name], tensor), f"{name} differs after resume ({fault})"
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6, "a resumed run re-logs the repeated steps exactly once"


def test_gradient_accumulation_equals_one_big_batch(shards, tmp_path):
    base = [*FAST, "--train-data", shards["train"], "--eval-data", "none", "--max_steps", "1",
            "--deterministic", "true"]
    run(parse_args([*base, "--out", str(tmp_path / "big"), "--batch_size", "8"]))
    run(parse_args([*base, "--out", str(tmp_path / "acc"), "--batch_size", "4", "--grad_accum", "2"]))
    big, acc = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    assert [n for n in big if n.endswith("embed")], "the codebooks are part of the comparison"
    for name, tensor in big.items():
        torch.testing.assert_close(acc[name], tensor, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_each_stage_trains_only_what_it_declares(shards, tmp_path, stage):
    cfg = parse_args(_args(shards, tmp_path, "--stage", str(stage), "--max_steps", "1"))
    world = dist_utils.setup("cpu")
    tr = build_trainer(cfg, world)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    frozen = {n for n, p in tr.model.named_parameters() if not p.requires_grad}
    tr.tokenizer_micro_step(tr.model, next(tr.batches()), scale=1.0)
    tr.optimizer_step()
    for name, p in tr.model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if name in frozen:
            assert not moved, f"stage {stage}: frozen {name} moved"
    trunk_blocks = {n for n in frozen if n.startswith("encoder.trunk.blocks.")}
    if stage == 0:
        assert "encoder.trunk.blocks.0.attn.qkv.weight" in trunk_blocks
        assert "encoder.trunk.blocks.4.attn.qkv.weight" in trunk_blocks  # semantic_layer = 5 (1-indexed)
        assert "encoder.trunk.blocks.5.attn.qkv.weight" not in frozen
    elif stage == 1:
        assert not frozen
    else:
        assert any(n.startswith("decoder.") for n in frozen) and any(n.startswith("pixel_proj.") for n in frozen)
        assert not any(n.startswith("semantic_proj.") for n in frozen)


def test_a_config_error_is_reported_before_any_data_is_read(tmp_path):
    missing = tmp_path / "no-such-shards-{0000..0009}.tar"
    with pytest.raises(ConfigError, match="pixel_layer=40"):
        parse_args([*FAST, "--train-data", str(missing), "--model.pixel_layer", "40"])
    with pytest.raises(ConfigError, match="stage=7"):
        parse_args([*FAST, "--train-data", str(missing), "--stage", "7"])
    with pytest.raises(ConfigError, match="has no field"):
        parse_args([*FAST, "--model.no_such_field", "1"])


def test_release_flags_parse_to_the_same_settings_as_ours():
    release = ("--sem_weight 2 --stage 0 --name myrun --model model_config_siglip_384_rvq8 --train-data=x-{0..3}.tar "
               "--model.backbone.pretrained webli "
               "--train-num-samples 1000 --dataset-type webdataset --warmup=100 --batch-size=16 --lr=7.2e-5 "
               "--beta1=0.5 --beta2=0.9 --wd=0.0001 --epochs=3 --gan_start_epoch=1 --restart_gan=2 --workers=2")
    ours = ("--preset so400m-384 --model.backbone.pretrained webli --loss.sem_weight 2 --stage 0 --out runs/myrun --train_data x-{0..3}.tar "
            "--train_num_samples 1000 --warmup_steps 100 --batch_size 16 --lr 7.2e-5 --beta1 0.5 --beta2 0.9 "
            "--weight_decay 0.0001 --epochs 3 --gan_start_epoch 1 --restart_gan 2 --workers 2")
    assert parse_args(release.split()) == parse_args(ours.split())


def test_bad_samples_are_skipped_and_counted(tmp_path):
    train = _write_shard(tmp_path / "bad.tar", "train", 24, corrupt=(1, 5, 9))
    summary = run(parse_args([*FAST, "--train-data", train, "--eval-data", "none", "--max_steps", "6",
                              "--out", str(tmp_path / "run")]))  # 6 batches of 4 = the whole shard once
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [line["data_skipped"] for line in lines]
    assert skipped == sorted(skipped) and skipped[-1] == 3.0  # samples 1, 5 and 9, each counted once
    assert summary["step"] == 6


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    result = _cli(_args(shards, tmp_path, "--max_steps", "6", "--save_every", "2"), fault="nan-loss:3")
    assert result.returncode == 3
    assert "non-finite loss at step 3" in result.stderr
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000002"]
    from dualtoken_lite.model.dualtoken import DualToken

    DualToken.from_pretrained(tmp_path / "checkpoints" / "step_00000002")  # loads strictly


def test_two_processes_train_in_step(shards, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dualtoken_lite.train", *_args(shards, tmp_path, "--max_steps", "3", "--grad_accum", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 3 and summary["world_size"] == 2
    assert summary["ranks_identical"] is True  # every parameter and codebook buffer equal on both ranks


def test_config_json_round_trips_and_an_incomplete_one_is_refused(tmp_path):
    """A run folder's config.json loads back into the TrainConfig that wrote it; one lacking fields is refused."""
    from dualtoken_lite.settings import atomic_write_text, to_dict
    from dualtoken_lite.training.arguments import load_run_config

    cfg = parse_args(["--out", str(tmp_path), "--max_steps", "7", "--loss.sem_weight", "2", "--model.pixel_layer", "1"])
    atomic_write_text(tmp_path / "config.json", json.dumps(to_dict(cfg)))
    assert load_run_config(tmp_path) == cfg
    partial = to_dict(cfg)
    del partial["loss"]["sem_weight"], partial["max_steps"]
    (tmp_path / "config.json").write_text(json.dumps(partial))
    with pytest.raises(ConfigError, match=r"lacks the field\(s\) \['max_steps', 'loss.sem_weight'\]"):
        load_run_config(tmp_path)


def _lever_run(shards, out, lever: str, on: bool, steps: int) -> tuple[dict, dict]:
    """``steps`` training steps on one batch with every lever off but ``lever`` (on or off): grads of the last
    micro-step (before the optimizer moves) and the weights after."""
    cfg = parse_args(_args(shards, out, "--fast_group_norm", "false", "--fused_adamw", "false",
                           f"--{lever}", str(on).lower()))
    tr = build_trainer(cfg, dist_utils.setup("cpu"))
    batch = next(tr.batches())
    for _ in range(steps):
        tr.tokenizer_micro_step(tr.model, batch, scale=1.0)
        grads = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}
        tr.optimizer_step()
        tr.model.update_codebooks()
    return grads, {n: t.detach().clone() for n, t in tr.model.state_dict().items()}


def test_fast_group_norm_changes_no_gradient(shards, tmp_path):
    """A training step's gradients with the channels_last GroupNorm backward equal the plain ones (rounding)."""
    (plain, _), (fast, _) = (_lever_run(shards, tmp_path / str(on), "fast_group_norm", on, 1) for on in (False, True))
    scale = max(float(g.abs().max()) for g in plain.values())
    for name, g in plain.items():  # conv biases just before a GroupNorm have true gradient 0: one common scale
        torch.testing.assert_close(fast[name], g, rtol=0, atol=1e-5 * scale, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_adamw_changes_no_update(shards, tmp_path):
    """Two steps with the fused AdamW kernel give the weights of the per-tensor AdamW (float rounding apart).

    Entries whose true gradient is 0 (k biases, conv biases just before a one-channel-per-group GroupNorm) get
    rounding noise that Adam scales up to a full step of either sign; they are left out of the comparison.
    """
    (grads, plain), (_, fused) = (_lever_run(shards, tmp_path / str(on), "fused_adamw", on, 2) for on in (False, True))
    scale = max(float(g.abs().max()) for g in grads.values())
    compared = 0
    for name, w in plain.items():
        real = grads[name].abs() > 1e-6 * scale if name in grads else torch.ones_like(w, dtype=torch.bool)
        torch.testing.assert_close(fused[name][real], w[real], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
        compared += int(real.sum())
    assert compared > 0.99 * sum(w.numel() for w in plain.values())


def test_the_first_tiny_recipe_still_validates():
    """The tiny preset's changes (docs/tiny_recipe.md) are plain overrides: the old recipe is one command line away."""
    cfg = parse_args(["--model.pixel_layer", "2", "--model.shortcut_layer", "1", "--model.decoder_norm_groups", "32",
                      "--bf16", "false"])
    assert (cfg.model.pixel_layer, cfg.model.shortcut_layer, cfg.model.decoder_norm_groups, cfg.bf16) == (2, 1, 32, False)


def test_the_summary_reports_luma_and_chroma(shards, tmp_path):
    summary = run(parse_args(_args(shards, tmp_path / "run", "--max_steps", "2", "--save_every", "0")))
    figures = summary["eval"]
    assert {"psnr", "psnr_luma", "psnr_chroma"} <= set(figures)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]["psnr_chroma"] == figures["psnr_chroma"]
