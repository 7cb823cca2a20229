"""The speed levers of TrainConfig that change how a step computes, never what: each one's effect on results.

Levers with their own module keep their tests beside it (the fast GroupNorm in test_decoder.py and test_train.py,
the fused AdamW in test_train.py, the nearest-code lookup in test_codebook.py). Process-wide levers run in fresh
processes here, since nothing can undo them inside the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualtoken_lite.model.onednn_linear import OneDNNLinear, linear, takes_onednn_path, use_onednn_linear
from dualtoken_lite.training.allocator import glibc

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
needs_glibc = pytest.mark.skipif(glibc() is None, reason="mallopt is glibc's")

TRAIN_STEPS = """
import sys, torch
from safetensors.torch import save_file
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.setup import build_trainer
keep, out = sys.argv[1], sys.argv[2]
cfg = parse_args(["--preset", "tiny", "--teacher", "backbone", "--batch_size", "8", "--threads", "1", "--bf16", "false",
                  "--model.pixel_quantizer.codebook_size", "64", "--model.semantic_quantizer.codebook_size", "64",
                  "--train-data", "data/tinyworld/eval-0000.tar", "--eval-data", "none", "--out", out + "_run",
                  "--keep_freed_memory", keep])
tr = build_trainer(cfg, dist_utils.setup("cpu"))
batches = tr.batches()
for _ in range(3):
    tr.tokenizer_micro_step(tr.model, next(batches), scale=1.0)
    tr.optimizer_step()
    tr.model.update_codebooks()
save_file({k: v.contiguous() for k, v in tr.model.state_dict().items()}, out)
"""

PAGE_FAULTS = """
import resource, sys, torch
from dualtoken_lite.training.allocator import keep_freed_memory
if sys.argv[1] == "true":
    assert keep_freed_memory()
def step():  # large activations alive at once, all freed at the end
    activations = [torch.ones(16 << 20) for _ in range(4)]  # 4 x 64 MiB: above glibc's own 32 MiB ceiling
    del activations
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@needs_glibc
def test_keep_freed_memory_trains_bit_identically(tmp_path):
    """Three steps on fresh batches give the same weights to the last bit whether freed memory is kept or not."""
    weights = {}
    for keep in ("false", "true"):
        _python(TRAIN_STEPS, keep, str(tmp_path / f"{keep}.safetensors"))
        weights[keep] = load_file(tmp_path / f"{keep}.safetensors")
    assert weights["true"].keys() == weights["false"].keys()
    for name, w in weights["false"].items():
        assert torch.equal(weights["true"][name], w), name


@needs_glibc
def test_keep_freed_memory_stops_page_faults_of_reallocated_blocks():
    """Steps that allocate 256 MiB in 64 MiB blocks fault every page in again each time, unless memory is kept."""
    plain, kept = (int(_python(PAGE_FAULTS, keep).strip()) for keep in ("false", "true"))
    assert plain > 5 * 60_000  # 65,536 pages of 4 KiB per step
    assert kept < 1000


# ------------------------------------------------------------------------------------------ onednn_linear
@pytest.mark.parametrize("shape", [(16, 64, 192), (2, 8, 32), (4, 13, 32), (5, 32)])  # 1,024 / 16 / 52 / 5 rows
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_linear_with_gradients(shape, bias):
    """Output and every gradient of ``linear`` equal F.linear's up to float rounding (rows not divisible by 16,
    or fewer than 16, take F.linear itself)."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = (torch.randn(48, shape[-1], generator=g) / shape[-1] ** 0.5).requires_grad_(True)
    b = torch.randn(48, generator=g, requires_grad=True) if bias else None
    dy = torch.randn(*shape[:-1], 48, generator=g)
    got, want = (fn(x, w, b) for fn in (linear, torch.nn.functional.linear))
    grads = [torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy) for y in (got, want)]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)
    assert takes_onednn_path(x) == (x.numel() // shape[-1] % 16 == 0)


def test_onednn_linear_leaves_bf16_autocast_to_linear():
    """Under bf16 autocast (where oneDNN already runs the plain matmul) ``linear`` is F.linear, bit for bit."""
    x, w = torch.randn(16, 64, 192), torch.randn(96, 192)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes_onednn_path(x)
        assert torch.equal(linear(x, w), torch.nn.functional.linear(x, w))


def test_use_onednn_linear_keeps_parameters_and_state_dict():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Sequential(torch.nn.Linear(16, 4)))
    keys = list(model.state_dict())
    use_onednn_linear(model, True)
    assert [type(m) for m in model.modules()].count(OneDNNLinear) == 2 and list(model.state_dict()) == keys
    use_onednn_linear(model, False)
    assert OneDNNLinear not in [type(m) for m in model.modules()]


def test_onednn_linear_changes_a_training_step_only_by_rounding():
    """Gradients of one training step of the tiny model (its tower, projections, teacher) with and without the lever."""
    from dualtoken_lite.training import distributed as dist_utils
    from dualtoken_lite.training.arguments import parse_args
    from dualtoken_lite.training.setup import build_trainer

    grads = {}
    for on in ("false", "true"):
        cfg = parse_args(["--preset", "tiny", "--teacher", "backbone", "--batch_size", "8", "--threads", "1",
                          "--bf16", "false", "--model.pixel_quantizer.codebook_size", "64",
                          "--model.semantic_quantizer.codebook_size", "64", "--train-data",
                          "data/tinyworld/eval-0000.tar", "--eval-data", "none", "--out", "/tmp/onednn_lever",
                          "--onednn_linear", on])
        tr = build_trainer(cfg, dist_utils.setup("cpu"))
        assert any(isinstance(m, OneDNNLinear) for m in tr.model.modules()) == (on == "true")
        tr.tokenizer_micro_step(tr.model, next(tr.batches()), scale=1.0)
        grads[on] = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}
    scale = max(float(g.abs().max()) for g in grads["false"].values())
    assert grads["true"].keys() == grads["false"].keys()
    for name, g in grads["false"].items():  # one common scale: some true gradients are 0 (k biases)
        torch.testing.assert_close(grads["true"][name], g, rtol=0, atol=1e-4 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
