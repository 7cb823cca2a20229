"""Distributed plumbing: one process per GPU (or CPU slot) under torchrun, with DDP.

`python -m dualtoken_lite.train` runs as a world of one; `torchrun --nproc_per_node N -m dualtoken_lite.train` sets
RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous for several nodes), which `setup()` reads. NCCL is used when
CUDA is available, gloo otherwise, so the same code is tested with two CPU processes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process sits: its global rank, the number of processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, draws progress bars and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> World:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device={device!r}: use 'auto', 'cpu' or 'cuda'")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for CUDA but torch.cuda.is_available() is False; use 'cpu'")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown() -> None:
    """Leave the process group cleanly (torchrun otherwise warns about a leaked group), once gloo's threads have let
    go of every tensor our collectives gave them (``release_handed``)."""
    if dist.is_initialized():
        release_handed()
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: str = "auto") -> Iterator[World]:
    """``setup()`` for the length of a block, leaving the process group however the block ends: the end of training,
    a clean stop (exit 4) or an error."""
    world = setup(device)
    try:
        yield world
    finally:
        teardown()


# A collective returns as soon as its result is ready, but gloo's worker thread drops its own reference to the
# tensor a moment later. If the caller's Python reference is gone by then, the worker must take the GIL to free the
# tensor's Python object, and a thread that takes the GIL while the interpreter shuts down aborts the process
# (std::terminate: exit -6 instead of the run's own exit code). So the tensors our collectives use are held here until
# the worker has let go of them, and teardown waits for that before the process may exit.
_HANDED: list[torch.Tensor] = []


def hand(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, kept alive until the collective it is given to has let go of it (see ``release_handed``)."""
    _HANDED[:] = [t for t in _HANDED if t._use_count() > 1]  # 1: only our Python reference is left
    _HANDED.append(tensor)
    return tensor


def release_handed(timeout_s: float = 10.0) -> None:
    """Wait (up to ``timeout_s``: a collective that failed may never let go) until no collective holds a tensor from
    ``hand``, then forget them all."""
    deadline = time.monotonic() + timeout_s
    while any(t._use_count() > 1 for t in _HANDED) and time.monotonic() < deadline:
        time.sleep(0.001)
    _HANDED.clear()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over all ranks (a copy, on ``x``'s device)."""
    if not dist.is_initialized():
        return x.detach().clone()
    y = hand(x.detach().clone().to(_collective_device()))
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (a collective: call it on every rank). One rank's failure then stops
    every rank together, instead of leaving the others waiting in the next collective forever."""
    if not dist.is_initialized():
        return ok
    flag = hand(torch.tensor(1.0 if ok else 0.0, device=_collective_device()))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_max(value: float) -> float:
    """The largest ``value`` over all ranks (a collective: call it on every rank)."""
    if not dist.is_initialized():
        return value
    box = hand(torch.tensor(float(value), device=_collective_device()))
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (decisions such as resume or refuse are made once, on rank 0)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def same_across_ranks(module: torch.nn.Module) -> bool:
    """True when every parameter and buffer equals rank 0's (a collective: call it on every rank)."""
    if not dist.is_initialized():
        return True
    differ = hand(torch.zeros(()))
    for tensor in module.state_dict().values():
        reference = hand(tensor.detach().clone())
        dist.broadcast(reference, src=0)
        differ += float(not torch.equal(reference, tensor.detach()))
    dist.all_reduce(differ)
    return bool(differ.item() == 0)
