"""The trainer: resume after SIGKILL or SIGTERM or a full disk equals an unbroken run, a second Ctrl-C stops at once,
accumulation equals a big batch, stages freeze, configs fail before data is read, bad samples are counted, NaN
stops cleanly, two processes agree (also on when to stop)."""

from __future__ import annotations

import json
import os
import shlex
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
    env.pop("DUALTOKEN_LITE_TRACEBACK", None)
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
    assert "took over" in resumed.stderr and "which has ended" in resumed.stderr  # the killed run's lock file
    weights = _weights(tmp_path)
    assert weights.keys() == unbroken.keys()
    for name, tensor in unbroken.items():
        assert torch.equal(weights[name], tensor), f"{name} differs after resume ({fault})"
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6, "a resumed run re-logs the repeated steps exactly once"


def _one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The line of stderr that holds every fragment; no traceback anywhere."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if all(f in line for f in fragments)]
    assert len(lines) == 1, (fragments, result.stderr[-3000:])
    return lines[0]


def _continue(line: str) -> subprocess.CompletedProcess:
    """Run the command a stop line prints (``... continue the run with: python -m dualtoken_lite.train ...``)."""
    argv = shlex.split(line.split("continue the run with: ")[1].removesuffix(" (once there is space)"))
    assert argv[:3] == ["python", "-m", "dualtoken_lite.train"], argv
    return _cli(argv[3:])


def _assert_equals_unbroken(run_dir: Path, unbroken: dict) -> None:
    weights = _weights(run_dir)
    assert weights.keys() == unbroken.keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in unbroken.items()), "weights differ"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss/total" in line]  # (the final evaluation has a line too)
    assert steps == list(range(1, 7)), f"every step logged once: {steps}"


def test_sigterm_finishes_the_step_and_its_command_continues_bit_identically(shards, unbroken, tmp_path):
    stopped = _cli(_args(shards, tmp_path, *RESUME), fault="term-after-step:3")
    assert stopped.returncode == 4, stopped.stderr[-3000:]
    checkpoint = tmp_path / "checkpoints" / "step_00000003"  # step 3 is no save step: written for the stop
    line = _one_line(stopped, f"stopped by SIGTERM after step 3: checkpoint {checkpoint}; continue the run with: "
                              f"python -m dualtoken_lite.train --out {tmp_path} --resume auto")
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == checkpoint.name
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3  # the checkpoint holds the last step taken: the resumed run recomputes none
    assert not (tmp_path / "model").exists() and not (tmp_path / "run.lock").exists()
    resumed = _continue(line)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_equals_unbroken(tmp_path, unbroken)


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_stays(shards, tmp_path):
    stopped = _cli(_args(shards, tmp_path, *RESUME), fault="int-twice:3")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    last = tmp_path / "checkpoints" / "step_00000002"
    _one_line(stopped, f"stopped at once by Ctrl-C; the last good checkpoint, {last}, is intact; continue the run "
                       f"with: python -m dualtoken_lite.train --out {tmp_path} --resume auto")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_a_full_disk_is_one_line_and_the_retry_continues_bit_identically(shards, unbroken, tmp_path):
    failed = _cli(_args(shards, tmp_path, *RESUME), fault="disk-full-in-save:4")
    assert failed.returncode == 2, failed.stderr[-3000:]
    last = tmp_path / "checkpoints" / "step_00000002"
    line = _one_line(failed, f"error: cannot write {tmp_path / 'checkpoints' / 'step_00000004'}: No space left on "
                             "device (it needs about ", f"the last good checkpoint, {last}, is intact")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000002"]  # no temporary
    resumed = _continue(line)  # the "disk" has room again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_equals_unbroken(tmp_path, unbroken)


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


def test_under_torchrun_a_signal_to_one_rank_stops_both_after_the_same_step(shards, tmp_path):
    """SIGTERM reaches rank 1 only, after step 2: rank 0 stops after step 2 too (and writes the checkpoint), none
    waits for the other in a collective."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("train_with_fault.py")), "term-after-step:2",
           *_args(shards, tmp_path, "--max_steps", "6", "--save_every", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "FAULT_RANK": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0  # torchrun reports its workers' exit code 4 as a failure
    assert (f"stopped by SIGTERM after step 2: checkpoint {tmp_path / 'checkpoints' / 'step_00000002'}; continue the "
            f"run with: torchrun [the same torchrun options] -m dualtoken_lite.train --out {tmp_path} --resume auto"
            ) in result.stderr, result.stderr[-3000:]
    assert "exitcode  : 4" in result.stderr or "exit code 4" in result.stderr.lower(), result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2


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
