"""Distributed plumbing: one process per GPU (or CPU slot) under torchrun, with DDP.

`python -m dualtoken_lite.train` runs as a world of one; `torchrun --nproc_per_node N -m dualtoken_lite.train` sets
RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous for several nodes), which `setup()` reads. NCCL is used when
CUDA is available, gloo otherwise, so the same code is tested with two CPU processes.
"""

from __future__ import annotations

import os
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
    """Leave the process group cleanly (torchrun otherwise warns about a leaked group)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over all ranks (a copy)."""
    y = x.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


@torch.no_grad()
def same_across_ranks(module: torch.nn.Module) -> bool:
    """True when every parameter and buffer equals rank 0's (a collective: call it on every rank)."""
    if not dist.is_initialized():
        return True
    differ = torch.zeros(())
    for tensor in module.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        differ += float(not torch.equal(reference, tensor.detach()))
    dist.all_reduce(differ)
    return bool(differ.item() == 0)
