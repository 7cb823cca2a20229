"""The paper's training step on a GPU: images/s, peak memory and the quantizer's share, with and without
gradient checkpointing.

Builds a paper preset (``so400m-384`` unless ``--preset`` says otherwise) with the trainer's own code, random
weights on purpose (a step's speed does not depend on them; no weights need downloading), and times the training
loop's own step, ``training.loop.train_step``: forward, every loss of the preset (LPIPS, distillation from the
frozen teacher, the GAN on from the first step), backward, AdamW, the codebook update and the discriminator's
step, all in bf16 autocast (fp32 where the device has no bf16 kernels). Each step trains on one fixed batch of the
tiny world's images resized to the preset's resolution (data loading is not part of the step). LPIPS uses
torchvision's VGG16 weights when they are on disk and a random VGG16 otherwise: the same computation either way.

For each setting of ``model.backbone.grad_checkpointing`` (on, the preset's, then off) it prints seconds per step,
images per second, the peak memory (on a GPU the most CUDA memory allocated at once; on a CPU the process's peak
resident memory) and the share of the step spent in the two quantizers' forwards and the codebook update (timed
with CUDA events on a GPU, so nothing inside the step waits for them). A setting that runs out of GPU memory
says so in its row.

On a CPU the same code runs at tiny dims (``--dims tiny``: the paper's 27 blocks, taps, RVQ depth 8 and five
decoder levels, on a 64-wide tower at 64 px with K = 1,024), which is what tests/test_gpu_speed.py runs; its
figures say nothing about a GPU. Run from the repository root:

    python benchmarks/gpu_speed.py                                   # a GPU: paper dims, batch 32
    python benchmarks/gpu_speed.py --batch-size 64 --steps 10        # a larger batch, more timed steps
    python benchmarks/gpu_speed.py --dims tiny --threads 1           # anywhere: the same code at tiny dims
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dualtoken_lite.settings import ConfigError, run_cli
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.loop import RunHooks, train_step
from dualtoken_lite.training.setup import build_trainer
from dualtoken_lite.training.steps import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data" / "tinyworld" / "eval-0000.tar")  # shipped with the repository: 64 px images
# Every run: random weights, the GAN on from the first step, LPIPS allowed a random VGG16, bf16, one fixed batch.
COMMON = ["--model.backbone.pretrained", "random", "--gan_start_step", "0", "--loss.allow_random_lpips", "true",
          "--bf16", "true", "--workers", "0", "--train-data", DATA, "--eval-data", "none"]
# The paper's layout at a size a CPU steps through in about a second: the tower's 27 blocks and its taps (pixel 6,
# shortcut 4, semantic 26), RVQ depth 8 on both branches, the decoder's five levels with 2 + 1 ResBlocks each.
TINY_DIMS = [
    "--model.backbone.arch", "tiny", "--model.backbone.image_size", "64", "--model.backbone.patch_size", "16",
    "--model.backbone.width", "64", "--model.backbone.heads", "4",
    "--model.pixel_quantizer.codebook_size", "1024", "--model.semantic_quantizer.codebook_size", "1024",
    "--model.decoder_latent_grid", "4", "--model.decoder_channels", "8", "--model.decoder_in_channels", "64",
    "--model.decoder_norm_groups", "8", "--loss.disc_channels", "32",
]


@dataclass
class Row:
    """One setting's figures."""

    checkpointing: bool  # model.backbone.grad_checkpointing during these steps
    seconds_per_step: float | None  # mean over the timed steps; None when the setting ran out of memory
    images_per_s: float | None  # batch size / seconds_per_step
    peak_gib: float | None  # peak CUDA memory allocated (GPU) or peak resident memory (CPU), GiB; None if unknown
    quantizer_share: float | None  # (quantizer forwards + codebook update) / step time, over the timed steps


class Stopwatch:
    """Time spent inside chosen methods, summed: CUDA events on a GPU (the step never waits for them), else the clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple] = []  # (start, end): CUDA events or perf_counter seconds
        self.wrapped: list[tuple] = []  # (owner, method name) of every wrapped method

    def now(self):
        """A point in time on the device's own timeline."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wrap(self, owner, method: str) -> None:
        """Count every call of ``owner.method`` from now on."""
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            start = self.now()
            result = original(*args, **kwargs)
            self.spans.append((start, self.now()))
            return result

        setattr(owner, method, timed)  # an instance attribute, found before the class's method
        self.wrapped.append((owner, method))

    def unwrap(self) -> None:
        """Give every wrapped method back its own code."""
        for owner, method in self.wrapped:
            delattr(owner, method)
        self.wrapped.clear()

    def seconds(self) -> float:
        """The summed time of the calls so far (on a GPU, after the device has finished them)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(start.elapsed_time(end) for start, end in self.spans) / 1e3
        return sum(end - start for start, end in self.spans)


def synchronize(device: torch.device) -> None:
    """Wait for the device to finish its queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak memory afresh (Linux: writing 5 to clear_refs resets the resident peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: peak_memory_gib then reports the peak since the process started


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated, or the process's peak resident memory (VmHWM) on the CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    kib = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")]
    return kib[0] / 2**20 if kib else None


def build(preset: str, dims: str, batch_size: int, device: str, flags: list[str]) -> tuple[Trainer, dict]:
    """The preset's trainer at ``dims`` ("paper" or "tiny") plus the fixed batch every timed step trains on."""
    out = Path(tempfile.gettempdir()) / "dualtoken_gpu_speed"  # build_trainer writes nothing there
    argv = ["--preset", preset, *COMMON, *(TINY_DIMS if dims == "tiny" else []), "--batch_size", str(batch_size),
            "--device", device, "--out", str(out), *flags]
    cfg = parse_args(argv)
    torch.manual_seed(cfg.seed)
    tr = build_trainer(cfg, dist_utils.setup(cfg.device))
    batch = next(tr.batches())  # {"image": (B, 3, h, w) in [-1, 1], ...}
    return tr, batch


def measure(tr: Trainer, batch: dict, checkpointing: bool, warmup: int, steps: int) -> Row:
    """Warm-up steps, then ``steps`` timed steps of the training loop with gradient checkpointing on or off."""
    device = tr.world.device
    tr.model.cfg.backbone.grad_checkpointing = checkpointing  # read by the tower at every forward
    stopwatch = Stopwatch(device)
    model = tr.model
    for quantizer in {id(q): q for q in (model.pixel_quantizer, model.semantic_quantizer) if q is not None}.values():
        stopwatch.wrap(quantizer, "forward")
    stopwatch.wrap(model, "update_codebooks")
    batches, hooks = itertools.repeat(batch), RunHooks()
    reset_peak_memory(device)
    try:
        for _ in range(warmup):
            train_step(tr, model, batches, hooks)
        synchronize(device)
        stopwatch.spans.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(tr, model, batches, hooks)
        synchronize(device)
        seconds = (time.perf_counter() - t0) / steps
    except torch.cuda.OutOfMemoryError:
        tr.optimizer.zero_grad(set_to_none=True)
        tr.pending.clear()
        torch.cuda.empty_cache()
        return Row(checkpointing, None, None, peak_memory_gib(device), None)
    finally:
        stopwatch.unwrap()
    share = stopwatch.seconds() / (seconds * steps)
    return Row(checkpointing, seconds, batch["image"].shape[0] / seconds, peak_memory_gib(device), share)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} thread(s)"


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def print_table(rows: list[Row], header: str) -> None:
    """One markdown table, one line per checkpointing setting."""
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    print(f"\n{header}\n")
    print("| gradient checkpointing | s / step | images / s | peak memory GiB | quantizer share |\n|---|---:|---:|---:|---:|")
    for row in rows:
        if row.seconds_per_step is None:
            print(f"| {'on' if row.checkpointing else 'off'} | out of memory | | {fmt(row.peak_gib, '.1f')} | |")
            continue
        print(f"| {'on' if row.checkpointing else 'off'} | {row.seconds_per_step:.3f} | {row.images_per_s:.1f} | "
              f"{fmt(row.peak_gib, '.2f')} | {row.quantizer_share:.1%} |")
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The paper's bf16 training step with and without gradient "
                                "checkpointing: images/s, peak memory, the quantizer's share.",
                                epilog="Further arguments are training flags (python -m dualtoken_lite.train --help).")
    p.add_argument("--preset", default="so400m-384", help="a paper preset (training/presets.py)")
    p.add_argument("--dims", choices=("auto", "paper", "tiny"), default="auto",
                   help="paper: the preset's dims; tiny: the same layout, small; auto: paper on a GPU, tiny on a CPU")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 at paper dims, 4 at tiny dims")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each setting's timed steps")
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    args, flags = p.parse_known_args(argv)
    for name, lowest in (("batch_size", 1), ("steps", 1), ("threads", 1), ("warmup", 0)):
        value = getattr(args, name)
        if value is not None and value < lowest:
            raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= {lowest}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch.cuda.is_available() is False here; use --device cpu (or auto)")
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    dims = args.dims if args.dims != "auto" else ("paper" if on_gpu else "tiny")
    batch_size = args.batch_size or (32 if dims == "paper" else 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    tr, batch = build(args.preset, dims, batch_size, "cuda" if on_gpu else "cpu", flags)
    device, load_before = tr.world.device, load_average()
    rows = [measure(tr, batch, on, args.warmup, args.steps) for on in (True, False)]
    precision = "bf16 autocast" if tr.autocast else "fp32 (no bf16 kernels here)"
    print_table(rows, f"{args.preset} at {dims} dims on {device_name(device)}, {precision}, batch {batch_size}, "
                      f"{args.warmup} warm-up + {args.steps} timed steps per row; torch {torch.__version__}; load "
                      f"average before {load_before}, after {load_average()}")


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a bad setting: one line and exit code 2
