"""Benchmark: one training-mode forward of the paper-shaped residual quantizer on a CPU (docs/method.md §2).

Shape: K = 16,384 codes of dim 32, depth 8, one shared codebook, EMA + dead-code restart, a batch of
4 images x 729 positions (N = 2,916 vectors). Rows, side by side:

  ours          ``dualtoken_lite.ResidualQuantizer`` forward (accumulates EMA statistics)
  ours+update   the same forward followed by ``update_codebook()`` (the whole per-step quantizer cost)
  ResidualVQ    ``vector_quantize_pytorch.ResidualVQ`` (its forward applies its EMA update itself)
  floor         for each depth one unchunked fp32 matmul (N x 32) @ (32 x K), nothing else (a fresh N x K output)
  floor reused  the same matmuls into one preallocated N x K output (no page faults: the lower floor)

Time: median wall time per call over ``--repeats`` calls after warm-up calls; all rows in one process,
timed in interleaved rounds so that load from other programs hits them alike.
Memory: a fresh process per row, with glibc's mmap threshold pinned at 128 KiB
(``MALLOC_MMAP_THRESHOLD_``), so every large tensor is its own mapping and is returned to the OS when freed
(this makes calls slower, so that process is not timed). Peak = the resident-set high-water mark (VmHWM,
reset through /proc/self/clear_refs) during one call minus the resident set just before it: the extra
memory that call needed at its worst moment, tensors the call returns included.

Run (2 threads, as the README table):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_quantizer.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

ROWS = ("ours", "ours+update", "ResidualVQ", "floor", "floor reused")


def rss_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (this benchmark needs Linux)")


def peak_extra_mib(fn) -> float:
    """Peak resident memory above the starting level while fn() runs, in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = rss_kib("VmRSS")
    result = fn()
    peak = rss_kib("VmHWM")
    del result
    return (peak - before) / 1024


def build(row: str, args) -> Callable:
    """The callable one benchmark row times."""
    torch.manual_seed(0)
    z = torch.randn(args.images, args.positions, args.dim, requires_grad=True)  # (B, N, d) encoder output
    if row in ("ours", "ours+update"):
        from dualtoken_lite.quantizers.residual import ResidualQuantizer

        rq = ResidualQuantizer(args.dim, args.depth, args.codebook_size, shared_codebook=True).train()

        def step():
            out = rq(z)
            rq.update_codebook()
            return out

        if row == "ours":  # one update first, so the codebook is initialised from data as in training
            step()
            return lambda: rq(z)
        return step
    if row == "ResidualVQ":
        from vector_quantize_pytorch import ResidualVQ

        rvq = ResidualVQ(
            dim=args.dim,
            num_quantizers=args.depth,
            codebook_size=args.codebook_size,
            shared_codebook=True,
            decay=0.99,
            kmeans_init=False,
            threshold_ema_dead_code=1,
            rotation_trick=False,
        ).train()
        return lambda: rvq(z)
    if row in ("floor", "floor reused"):
        x = z.detach().reshape(-1, args.dim)  # (N, d)
        embed_t = torch.randn(args.dim, args.codebook_size)  # (d, K)
        out = torch.empty(x.shape[0], args.codebook_size) if row == "floor reused" else None  # (N, K)

        def floor():
            for _ in range(args.depth):
                torch.mm(x, embed_t, out=out)  # (N, K), the whole distance-matrix product, no argmin

        return floor
    raise ValueError(f"unknown row {row!r}; choose one of {ROWS}")


def time_rows(args) -> dict:
    """Median ms per call of every row, built in this process and timed in interleaved rounds (fair under load)."""
    torch.set_num_threads(args.threads)
    fns = {row: build(row, args) for row in ROWS}
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    times = {row: [] for row in ROWS}
    for _ in range(args.repeats):
        for row, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[row].append(time.perf_counter() - start)
    return {row: {"median_ms": 1000 * statistics.median(t)} for row, t in times.items()}


def memory_row(row: str, args) -> dict:
    """Peak extra MiB of one call of one row (run in a fresh process with the mmap threshold pinned)."""
    torch.set_num_threads(args.threads)
    fn = build(row, args)
    for _ in range(args.warmup):
        fn()
    return {row: {"peak_mib": peak_extra_mib(fn)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the README table: 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per row (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--images", type=int, default=4, help="B, images per batch")
    parser.add_argument("--positions", type=int, default=729, help="N per image (27 x 27 in the paper)")
    parser.add_argument("--dim", type=int, default=32, help="d, code dim")
    parser.add_argument("--depth", type=int, default=8, help="D, residual depth")
    parser.add_argument("--codebook-size", type=int, default=16384, help="K, codes")
    parser.add_argument("--measure", choices=("time", "memory"), help="internal: one measurement, print JSON")
    parser.add_argument("--row", choices=ROWS, help="internal: the row of --measure memory")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(time_rows(args) if args.measure == "time" else memory_row(args.row, args)))
        return

    options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("row", "measure")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    runs = [(["--measure", "time"], env)]
    for row in ROWS:  # every large tensor its own mapping: RSS follows live tensors (slower, so untimed)
        runs.append((["--measure", "memory", "--row", row], dict(env, MALLOC_MMAP_THRESHOLD_="131072")))
    results = {row: {} for row in ROWS}
    load_before = os.getloadavg()[0]  # other programs on the machine: timings are only comparable within a run
    for extra, run_env in runs:
        cmd = [sys.executable, __file__, *extra, *options]
        done = subprocess.run(cmd, env=run_env, capture_output=True, text=True, check=True)
        for row, figures in json.loads(done.stdout.strip().splitlines()[-1]).items():
            results[row].update(figures)

    n = args.images * args.positions
    print(
        f"Residual quantizer, training forward: N = {args.images} x {args.positions} = {n} vectors, d = {args.dim}, "
        f"D = {args.depth}, K = {args.codebook_size}, shared codebook; torch {torch.__version__}, "
        f"{args.threads} CPU threads, median of {args.repeats}; 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)\n"
    )
    floor_ms, reused_ms = results["floor"]["median_ms"], results["floor reused"]["median_ms"]
    rvq_mib = results["ResidualVQ"]["peak_mib"]
    print("| row | median ms / call | x floor time | x floor reused | peak extra MiB | x ResidualVQ memory |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in ROWS:
        r = results[row]
        print(
            f"| {row} | {r['median_ms']:.1f} | {r['median_ms'] / floor_ms:.2f} | {r['median_ms'] / reused_ms:.2f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / rvq_mib:.2f} |"
        )


if __name__ == "__main__":
    main()
