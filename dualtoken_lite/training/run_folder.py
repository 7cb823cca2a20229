"""A training run's folder, owned by one run: the one way every trainer (tokenizer, teacher, unified) runs its loop.

    with RunFolder(cfg, rules, world, given) as folder:   # lock RUN/run.lock (rank 0), plan the start
        if folder.plan.action == "finished": return folder.plan.summary
        cfg = folder.cfg                                   # the saved config on resume, plus the allowed changes
        ...build the model and data; folder.plan.checkpoint is what to continue from, or None...
        folder.begin(records)                              # only now is anything written: config.json (+ records)
        while step < total:
            ...one step (NaN or inf: raise NonFiniteError naming it, exit 3)...
            stop = folder.stop_signal()                    # SIGTERM / Ctrl-C on any rank (training.interrupts)
            if due or stop: folder.save_checkpoint(step, model, state, keep)
            if stop: folder.stop(step, stop)               # one line naming the checkpoint and the command; exit 4
        folder.save_model(model.save_pretrained, needed)
        folder.write_summary(summary)

``cfg`` is the trainer's config dataclass (with ``out``, ``resume``, ``overwrite``); ``rules`` a ``RunRules``: the
trainer's command, what its runs write, which settings a resume may change. What a start does with its folder is
``training.run_plan`` (the table). The promises every trainer keeps through this class:

- one owner: a start while another process trains in the folder is refused, naming it (training.run_lock);
- nothing is written before the run can start (``begin``): a start refused for its data leaves the folder as it
  was, and a new run that fails with a user error before its first checkpoint removes what it wrote;
- checkpoints and the final model are written atomically (training.checkpoints); a full disk ends in one line naming
  the path and the space needed, the partial write removed and the last good checkpoint intact;
- SIGTERM or Ctrl-C: the current step ends, a checkpoint is written, one line names it and the command that
  continues the run (exit 4); a second signal stops at once (exit 130 / 143) and the last good checkpoint stays;
- under torchrun, rank 0 decides and writes; the ranks agree each step on stopping, and a failed write stops all.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from dualtoken_lite.settings import (
    EXIT_NON_FINITE,
    EXIT_STOPPED,
    EXIT_USER_ERROR,
    EarlyExit,
    UserError,
    WriteFailed,
    atomic_write_text,
    remove_left_behind,
    to_dict,
    write_failed,
)
from dualtoken_lite.training import distributed as dist_utils
from dualtoken_lite.training.checkpoints import latest_checkpoint, save_checkpoint, write_folder
from dualtoken_lite.training.interrupts import Interrupted, StopSignals, signal_name
from dualtoken_lite.training.run_lock import RunFolderError, RunLock
from dualtoken_lite.training.run_plan import (
    Plan,
    RunRules,
    check_writable,
    clear_run,
    plan_start,
    target_folder,
)

__all__ = ["NonFiniteError", "Plan", "RunFolder", "RunFolderError", "RunRules", "plan_start"]


class NonFiniteError(EarlyExit):
    """NaN or inf in a training step (a loss, a model's input, weights about to be saved): the run stops, naming
    the step, and exits 3; the last good checkpoint is as it was."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}. Stopped without saving; the last good checkpoint is intact (lower --lr, "
                         "check the data, or resume from it with --resume)", EXIT_NON_FINITE)


class RunFolder:
    """One run's folder, owned from ``with`` to the end of the block: lock, plan, signals, checkpoints, model, summary.

    Every write goes through rank 0; the other ranks wait, and a failed write stops every rank together.
    """

    def __init__(self, cfg: Any, rules: RunRules, world: dist_utils.World | None = None,
                 given: set[str] | None = None):
        self.rules, self.given, self.cfg = rules, given, cfg
        self.world = world or dist_utils.World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        self.path = target_folder(cfg, given)  # the folder this start owns
        self.plan: Plan | None = None  # set on entering the ``with`` block
        self.lock = RunLock(self.path)
        self.signals = StopSignals(announce=self.world.is_main)
        self.began = False  # whether begin() ran: something may have been written
        self.checkpoint_written = False  # whether this start wrote a checkpoint

    # -------------------------------------------------------------------------------------------- start and end
    def __enter__(self) -> RunFolder:
        self.signals.__enter__()
        try:
            outcome = None
            if self.world.is_main:
                try:
                    check_writable(self.path)
                    note = self.lock.acquire(" ".join(sys.argv))
                    if note:
                        print(note, file=sys.stderr)
                    outcome = plan_start(self.cfg, self.rules, self.given)
                except UserError as err:
                    outcome = err
            outcome = dist_utils.broadcast_object(outcome)
            if isinstance(outcome, Exception):
                raise outcome
        except BaseException as err:
            self.__exit__(type(err), err, None)
            raise
        self.plan, self.cfg = outcome, outcome.cfg
        return self

    def begin(self, records: dict[str, str] | None = None) -> None:
        """Start writing (call it once the model and data are ready): clear the run that --overwrite replaces, write
        config.json and, for a new run, ``records`` (file name -> text: what the run depends on beyond its config,
        such as the teacher it distils from), report changed settings. From now on the first SIGTERM / Ctrl-C stops
        after the current step."""
        def start() -> None:
            if self.plan.action == "new" and self.cfg.overwrite:
                clear_run(self.path, self.rules.files)
            self.path.mkdir(parents=True, exist_ok=True)
            for folder in (self.path, self.path / "checkpoints"):
                remove_left_behind(folder)  # temporaries of this host's dead processes
            if self.plan.action == "new" or self.plan.changed:
                self.write_text("config.json", json.dumps(to_dict(self.cfg), indent=2) + "\n")
            if self.plan.action == "new":
                for name, text in (records or {}).items():
                    self.write_text(name, text)
            for name, (before, now) in (self.plan.changed or {}).items():
                print(f"resume: {name} changed from {before!r} to {now!r}", file=sys.stderr)

        self.began = True
        self._main_writes(start)
        self.signals.deferring = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.signals.__exit__()
        replacement = self._explain(exc) if exc is not None else None
        failed_new = self.plan is not None and self.plan.action == "new" and not self.checkpoint_written
        self._release(undo=failed_new and isinstance(replacement or exc, UserError))
        if replacement is not None:
            raise replacement from None
        return False

    def _release(self, undo: bool) -> None:
        """Drop the lock; ``undo``: first remove what a new run wrote (it failed before its first checkpoint)."""
        if not self.world.is_main:
            return
        if undo and self.began:
            clear_run(self.path, self.rules.files)
        self.lock.release()
        if self.lock.created_folder and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # a refused start leaves no folder behind

    def _explain(self, exc: BaseException) -> BaseException | None:
        """The one line a stop or a failed write ends with: what stays, and the command that continues the run."""
        if not self.world.is_main and isinstance(exc, EarlyExit | WriteFailed | OSError):
            return EarlyExit("", getattr(exc, "exit_code", EXIT_USER_ERROR))  # rank 0 says it
        latest = latest_checkpoint(self.path / "checkpoints")

        def kept(when: str = "") -> str:
            if latest is None:
                return "there is no checkpoint to continue from yet"
            return (f"the last good checkpoint, {latest}, is intact; {when}continue the run with: "
                    f"{self.continue_command()}")

        if isinstance(exc, Interrupted):
            if not self.began:
                return Interrupted(exc.signum, f"stopped at once by {signal_name(exc.signum)} before training began; "
                                               f"{self.path} is as it was")
            return Interrupted(exc.signum, f"stopped at once by {signal_name(exc.signum)}; {kept()}")
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            exc = write_failed(exc.filename or self.path, exc)
        if isinstance(exc, WriteFailed):
            return WriteFailed(f"{exc}. Nothing partial was left; {kept('once there is space, ')}")
        return None

    # ------------------------------------------------------------------------------------------------ while training
    def stop_signal(self) -> int:
        """The signal that asked to stop (SIGTERM, Ctrl-C) on any rank, 0 for none (a collective: every step)."""
        return self.signals.requested()

    def save_checkpoint(self, step: int, model, state: dict, keep: int, before_commit=None) -> None:
        """Write checkpoint ``step`` atomically (training.checkpoints.save_checkpoint) on rank 0."""
        self._main_writes(lambda: save_checkpoint(self.path / "checkpoints", step, model, state, keep=keep,
                                                  before_commit=before_commit))
        self.checkpoint_written = True

    def stop(self, step: int, signum: int) -> NoReturn:
        """End the run after the stop checkpoint: one line naming it and the command that continues (exit 4)."""
        latest = latest_checkpoint(self.path / "checkpoints")
        message = (f"stopped by {signal_name(signum)} after step {step}: checkpoint {latest}; continue the run with: "
                   f"{self.continue_command()}")
        raise EarlyExit(message if self.world.is_main else "", EXIT_STOPPED)

    def continue_command(self) -> str:
        """The command that continues this run (every other setting comes from its config.json)."""
        launcher = self.rules.command
        if self.world.distributed and launcher.startswith("python -m "):
            launcher = "torchrun [the same torchrun options] -m " + launcher.removeprefix("python -m ")
        return f"{launcher} --out {self.path} --resume auto"

    # --------------------------------------------------------------------------------------------------- at the end
    def save_model(self, write: Callable[[Path], Any], needed: int | None = None) -> None:
        """Write RUN/model atomically with ``write(folder)`` (e.g. ``model.save_pretrained``) on rank 0."""
        self._main_writes(lambda: write_folder(self.path / "model", write, needed))

    def write_summary(self, summary: dict) -> None:
        """Write RUN/summary.json atomically on rank 0 (a finished run is one with a summary and a model)."""
        self._main_writes(lambda: self.write_text("summary.json", json.dumps(summary, indent=2) + "\n"))

    def write_text(self, name: str, text: str) -> Path:
        """Write ``RUN/name`` atomically; a failed write is a WriteFailed naming it."""
        try:
            atomic_write_text(self.path / name, text)
        except OSError as err:
            raise write_failed(self.path / name, err) from None
        return self.path / name

    def _main_writes(self, write: Callable[[], Any]) -> Any:
        """Run ``write`` on rank 0 while the others wait; when it fails, every rank stops (rank 0 says why)."""
        result, failure = None, None
        if self.world.is_main:
            try:
                result = write()
            except Exception as err:
                failure = err
        if not dist_utils.all_ok(failure is None):
            raise failure or EarlyExit("", EXIT_USER_ERROR)
        return result
