"""Run the trainer with one injected fault, from outside the training loop (used by test_train.py).

    python tests/train_with_fault.py FAULT [trainer flags ...]

FAULT is "kill-after-step:N" (SIGKILL right after optimizer step N), "kill-in-save:N" (SIGKILL while checkpoint N
is written but not yet renamed into place) or "nan-loss:N" (step N's losses become NaN). The faults enter through
the loop's public hooks (``training.loop.RunHooks``), so the library carries no test code.
"""

from __future__ import annotations

import os
import signal
import sys

from dualtoken_lite.training.loop import RunHooks, main


def kill_at(step: int):
    def hook(current: int, *_) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def nan_at(step: int):
    def hook(current: int, losses: dict) -> None:
        if current == step:
            losses["total"] = losses["total"] * float("nan")

    return hook


def hooks_for(fault: str) -> RunHooks:
    kind, step = fault.split(":")
    makers = {"kill-after-step": ("after_step", kill_at), "kill-in-save": ("before_checkpoint_commit", kill_at),
              "nan-loss": ("after_losses", nan_at)}
    if kind not in makers:
        raise SystemExit(f"unknown fault {fault!r}; use one of {sorted(makers)}:N")
    name, make = makers[kind]
    return RunHooks(**{name: make(int(step))})


if __name__ == "__main__":
    main(sys.argv[2:], hooks_for(sys.argv[1]))
