"""Stopping a run cleanly on SIGTERM (what a cluster scheduler sends before it kills a job) and Ctrl-C (SIGINT).

    with StopSignals() as signals:
        ...                          # assembling the run: a signal stops at once (there is nothing to save yet)
        signals.deferring = True     # training: the first signal only asks to stop
        while training:
            step()
            if signals.requested():   # a collective under torchrun: every rank calls it after every step
                save a checkpoint, say how to continue, exit 4

The first signal while training asks the run to stop after the step it is in; a second one stops at once
(``Interrupted``, exit 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM), and the last complete checkpoint stays,
since checkpoints are written atomically. Under torchrun the ranks agree each step on whether any of them was
signalled (one all-reduce of a flag), so they all stop after the same step; torchrun forwards a SIGTERM or Ctrl-C it
receives to every rank, and sends SIGKILL ``--shutdown-timeout`` seconds later (30 by default): the checkpoint must
be written by then.
"""

from __future__ import annotations

import os
import signal
import threading

from dualtoken_lite.settings import EarlyExit
from dualtoken_lite.training import distributed as dist_utils

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """'Ctrl-C' for SIGINT, else the signal's name ('SIGTERM')."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Interrupted(EarlyExit):
    """A signal that stops at once (a second one while training, or one before training began); exit 128 + signum."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"stopped at once by {signal_name(signum)}", 128 + signum)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM handlers for the life of a run (the previous handlers come back on exit)."""

    def __init__(self, announce: bool = True):
        self.announce = announce  # write a line when the first signal arrives (rank 0 only, under torchrun)
        self.deferring = False  # True while training: the first signal asks to stop after the current step
        self.received: int | None = None  # the first signal that asked to stop, if any
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if not self.deferring or self.received is not None:
            raise Interrupted(signum)
        self.received = signum
        if self.announce:  # os.write: the handler may run while Python is inside a print to stderr
            os.write(2, f"\n{signal_name(signum)}: finishing this step, then writing a checkpoint "
                        f"({signal_name(signum)} again stops at once)\n".encode())

    def requested(self) -> int:
        """The signal that asked to stop on this rank or any other (the highest), 0 for none; a collective under
        torchrun: call it on every rank after every step."""
        return int(dist_utils.all_max(float(self.received or 0)))
