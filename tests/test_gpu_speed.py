"""benchmarks/gpu_speed.py at tiny dims on the CPU: the paper preset's training step, timed with and without
gradient checkpointing (no GPU needed)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_speed  # noqa: E402  (benchmarks/ is not a package)

from dualtoken_lite.model.config import model_preset  # noqa: E402
from dualtoken_lite.training.precision import native_bf16  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def trainer():
    """The paper preset's trainer at tiny dims (keep_freed_memory off: it would change this test process's malloc)."""
    return gpu_speed.build("so400m-384", "tiny", 2, "cpu", ["--keep_freed_memory", "false"])


def test_tiny_dims_keep_the_paper_layout(trainer):
    tr, batch = trainer
    paper = model_preset("so400m-384")
    cfg = tr.model.cfg
    assert (cfg.pixel_layer, cfg.shortcut_layer, cfg.semantic_layer) == (paper.pixel_layer, paper.shortcut_layer,
                                                                         paper.semantic_layer)
    assert len(tr.model.encoder.trunk.blocks) == paper.backbone.layers == 27
    assert cfg.pixel_quantizer.depth == paper.pixel_quantizer.depth == 8
    assert cfg.decoder_channel_mult == paper.decoder_channel_mult and cfg.backbone.grad_checkpointing
    assert tr.adversary is not None and tr.gan_on(0) and tr.perceptual is not None
    assert tr.autocast is native_bf16("cpu")  # bf16 asked; granted where this CPU has bf16 kernels
    assert batch["image"].shape == (2, 3, 64, 64)


def test_rows_time_the_step_and_checkpointing_recomputes(trainer):
    """With checkpointing each tower block runs twice per step (forward, then again in backward), without it once."""
    tr, batch = trainer
    calls = []
    hook = tr.model.encoder.trunk.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    counts, rows = [], []
    try:
        for on in (True, False):
            calls.clear()
            rows.append(gpu_speed.measure(tr, batch, on, warmup=0, steps=2))
            counts.append(len(calls))
    finally:
        hook.remove()
    assert counts == [4, 2]
    for row, on in zip(rows, (True, False)):
        assert row.checkpointing == on and row.seconds_per_step > 0
        assert row.images_per_s == pytest.approx(2 / row.seconds_per_step)
        assert 0 < row.quantizer_share < 1 and row.peak_gib > 0
    assert "forward" not in vars(tr.model.pixel_quantizer)  # the stopwatch gave the methods back
    assert "update_codebooks" not in vars(tr.model)
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_command_prints_both_rows():
    run = subprocess.run([sys.executable, "benchmarks/gpu_speed.py", "--device", "cpu", "--batch-size", "2",
                          "--warmup", "0", "--steps", "1", "--threads", "1"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    precision = "bf16 autocast" if native_bf16("cpu") else "fp32 (no bf16 kernels here)"
    assert f"so400m-384 at tiny dims on CPU, 1 thread(s), {precision}, batch 2" in run.stdout
    rows = re.findall(r"^\| (on|off) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \|$", run.stdout, re.M)
    assert [r[0] for r in rows] == ["on", "off"], run.stdout
    for _, seconds, rate, peak, share in rows:
        # images/s is printed to one decimal (seconds to three): equal to batch / seconds up to that rounding
        assert float(rate) == pytest.approx(2 / float(seconds), abs=0.051)
        assert float(peak) > 0 and 0 < float(share) < 100


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--warmup", "-1")])
def test_bad_values_are_one_line(flag, value):
    run = subprocess.run([sys.executable, "benchmarks/gpu_speed.py", "--device", "cpu", flag, value],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {flag}={value} must be >= {0 if flag == '--warmup' else 1}"
