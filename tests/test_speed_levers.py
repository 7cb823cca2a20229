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
    tr.generator_micro_step(tr.model, next(batches), scale=1.0)
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
