"""Run the trainer with one injected fault, from outside the training loop (used by test_train.py, test_robustness.py).

    python tests/train_with_fault.py FAULT [trainer flags ...]
    torchrun --standalone --nproc_per_node 2 tests/train_with_fault.py FAULT [trainer flags ...]

FAULT is one of
    kill-after-step:N    SIGKILL right after optimizer step N
    kill-in-save:N       SIGKILL while checkpoint N is written but not yet renamed into place
    nan-loss:N           step N's losses become NaN
    term-after-step:N    SIGTERM right after step N (under torchrun: only on rank $FAULT_RANK when it is set)
    int-twice:N          two Ctrl-C (SIGINT) right after step N: the second one stops at once
    disk-full-in-save:N  the disk fills up while checkpoint N's training state is written (its writes raise ENOSPC)
    wait-after-step:N    after step N, wait until the file $FAULT_GO exists (a test holds a run still mid-training)
The faults enter through the loop's public hooks (``training.loop.RunHooks``) or, for the disk, through the file the
checkpoint writer opens, so the library carries no test code. The process ends as ``python -m dualtoken_lite.train``
does (``settings.run_cli``: exit codes and one-line messages).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import time

from dualtoken_lite.settings import run_cli
from dualtoken_lite.training import checkpoints
from dualtoken_lite.training.loop import RunHooks, main


def signal_at(step: int, signum: int, times: int = 1):
    def hook(current: int, *_) -> None:
        chosen = os.environ.get("FAULT_RANK")
        if current == step and (chosen is None or chosen == os.environ.get("RANK", "0")):
            for _ in range(times):
                os.kill(os.getpid(), signum)

    return hook


def wait_at(step: int):
    def hook(current: int) -> None:
        deadline = time.monotonic() + 300
        while current == step and not os.path.exists(os.environ["FAULT_GO"]) and time.monotonic() < deadline:
            time.sleep(0.05)

    return hook


def nan_at(step: int):
    def hook(current: int, losses: dict) -> None:
        if current == step:
            losses["total"] = losses["total"] * float("nan")

    return hook


class FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC once ``room`` bytes are written, as on a disk that fills up."""

    def __init__(self, path, room: int = 1 << 20):
        self.file, self.room = open(path, "wb"), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.room < len(data):
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.file.name))
        self.room -= len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


def fill_disk_at(step: int) -> None:
    """Checkpoint ``step``'s training_state.pt meets a full disk (the checkpoint writer opens it with ``open``)."""
    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(checkpoints.STATE_FILE) and f"step_{step:08d}" in str(path):
            return FullDisk(path)
        return open(path, mode, *args, **kwargs)

    checkpoints.open = fake_open


def hooks_for(fault: str) -> RunHooks:
    kind, step = fault.split(":")
    step = int(step)
    if kind == "disk-full-in-save":
        fill_disk_at(step)
        return RunHooks()
    makers = {"kill-after-step": ("after_step", lambda: signal_at(step, signal.SIGKILL)),
              "kill-in-save": ("before_checkpoint_commit", lambda: signal_at(step, signal.SIGKILL)),
              "nan-loss": ("after_losses", lambda: nan_at(step)),
              "term-after-step": ("after_step", lambda: signal_at(step, signal.SIGTERM)),
              "int-twice": ("after_step", lambda: signal_at(step, signal.SIGINT, times=2)),
              "wait-after-step": ("after_step", lambda: wait_at(step))}
    if kind not in makers:
        raise SystemExit(f"unknown fault {fault!r}; use one of {sorted([*makers, 'disk-full-in-save'])}:N")
    name, make = makers[kind]
    return RunHooks(**{name: make()})


if __name__ == "__main__":
    hooks = hooks_for(sys.argv[1])
    sys.exit(run_cli(lambda argv: main(argv, hooks), sys.argv[2:]))
