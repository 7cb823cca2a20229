"""Training checkpoints and resume: written atomically, loaded without running code, the N most recent kept.

Layout of a run folder's checkpoints:

    checkpoints/step_00000500/     the model in the `save_pretrained` layout (model.safetensors + config.json)
                 training_state.pt  everything else a resume needs (below), loaded with weights_only=True
    checkpoints/latest             one line: the name of the newest complete step folder

A checkpoint is first written to a hidden temporary folder (``.step_00000500.tmp-HOST-PID``) and then renamed into
place (an atomic operation on POSIX file systems), and `latest` is replaced the same way, so a process killed at any
moment leaves either the previous checkpoint or the new one, never half of one. A write that fails (a full disk)
removes its temporary folder and raises ``settings.WriteFailed`` naming the path and the space it needs; the previous
checkpoints stay. Temporaries left by a killed process are removed later, by the next save on the same host
(``settings.remove_left_behind``: only this process's own and those of processes no longer running).

training_state.pt holds: format version, step, the data position, both optimizers and schedulers, the
discriminator, RNG states (python, numpy, torch, CUDA), all as tensors and plain Python types.

Resuming is one path: ``resume_point`` turns what the user passed (``--resume auto``, a run folder, a step folder)
into a checkpoint folder, and ``resume`` loads it into a trainer (model weights strictly, then everything else).
The plain loops (the teacher's, the unified model's) write theirs with ``save_loop`` and continue with
``restore_loop``.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualtoken_lite.model.pretrained import WEIGHTS_NAME, CheckpointError, check_state_dict, read_weights
from dualtoken_lite.settings import (
    MissingFile,
    atomic_write_text,
    os_error_of,
    remove_left_behind,
    temporary_sibling,
    write_failed,
)

STATE_FORMAT_VERSION = 1
STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"


def step_dir_name(step: int) -> str:
    """'step_00000500' for step 500: zero-padded so names sort by step."""
    return f"step_{step:08d}"


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `capture_rng_state` saved."""
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before it is renamed into place."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def payload_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) dict / list / tuple: about what writing it takes on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(payload_bytes(v) for v in obj)
    return 0


def write_folder(final: str | Path, write: Callable[[Path], Any], needed: int | None = None,
                 before_commit: Callable[[], None] | None = None) -> Path:
    """Write a folder atomically: ``write(tmp)`` fills a temporary sibling, which is flushed and renamed onto
    ``final`` (replacing a folder of that name). When anything fails, the temporary is removed and ``final`` is as it
    was; a failure of the operating system (a full disk) becomes ``WriteFailed`` naming ``final``, the error and the
    ``needed`` bytes. ``before_commit`` is called when every file is written but not yet renamed (a test hook)."""
    final = Path(final)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        _fsync_tree(tmp)
        if before_commit is not None:
            before_commit()
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = os_error_of(err) if isinstance(err, Exception) else None
        if cause is None:
            raise
        raise write_failed(final, cause, needed) from None
    if final.exists():  # the same step saved again (e.g. after a resume): move the old one aside, then replace it
        old = temporary_sibling(final.with_name(final.name + "-old"))
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def save_checkpoint(
    root: str | Path, step: int, model, state: dict[str, Any], keep: int = 3, before_commit=None
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and prune all but the ``keep`` newest.

    ``model`` must offer ``save_pretrained(folder)`` and ``state_dict()``; ``state`` holds the rest (see the module
    docstring). ``before_commit`` is called when every file is written but not yet renamed into place (a test hook).
    A failed write raises ``WriteFailed`` and leaves the checkpoints as they were.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least one checkpoint must be kept")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    full_state = {"format_version": STATE_FORMAT_VERSION, "step": step, **state}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        with open(tmp / STATE_FILE, "wb") as f:  # a file object: a full disk's OSError stays visible
            torch.save(full_state, f)

    needed = payload_bytes(model.state_dict()) + payload_bytes(full_state)
    final = write_folder(root / step_dir_name(step), write, needed, before_commit)
    try:
        atomic_write_text(root / LATEST_FILE, final.name + "\n")
    except OSError as err:  # `latest` still names the previous checkpoint, which resume then takes
        raise write_failed(root / LATEST_FILE, err) from None
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    remove_left_behind(root)  # temporaries of a process killed mid-write (this host's, and only dead processes')
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temporary folders are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest step folder found."""
    root = Path(root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / STATE_FILE).is_file():
            return named
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """Read a checkpoint's training_state.pt with ``weights_only=True`` (never runs code from the file)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise MissingFile(f"no {STATE_FILE} in {folder}: is it a checkpoint folder (checkpoints/step_*)?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as err:  # a truncated file or one holding code
        raise CheckpointError(f"{path} cannot be loaded safely ({type(err).__name__}: {str(err)[:200]}); resume "
                              "from an earlier checkpoint (checkpoints/step_*)") from None
    version = state.get("format_version")
    if version != STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has training-state format version {version}; this dualtoken_lite reads "
            f"version {STATE_FORMAT_VERSION}"
        )
    return state


def resume_point(resume: str | None, out: str | Path) -> Path | None:
    """The checkpoint folder a run continues from: ``resume`` as given on the command line, resolved.

    None -> None (a fresh run); "auto" -> the newest checkpoint under ``out`` if there is one, else None;
    a checkpoint folder (``RUN/checkpoints/step_*``) -> itself; a run folder -> its newest checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(Path(out) / "checkpoints")
    folder = Path(resume)
    if (folder / STATE_FILE).is_file():
        return folder
    found = latest_checkpoint(folder / "checkpoints")
    if found is None:
        raise MissingFile(f"--resume {resume}: no checkpoint there (expected checkpoints/step_*)")
    return found


def restore_loop(checkpoint: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule,
                 batches: torch.Generator, lr_at: Callable[[int], float]) -> int:
    """Continue a plain training loop (the teacher's, the unified model's) from a checkpoint folder: the weights
    (strict), optimizer, schedule, batch generator and every RNG; returns the step. ``lr_at(step)`` is the schedule's
    multiplier at a step, so a run given more steps continues on its stretched schedule."""
    weights = read_weights(Path(checkpoint) / WEIGHTS_NAME)
    check_state_dict(model.state_dict(), weights, str(checkpoint))
    model.load_state_dict(weights, strict=True)
    state = load_training_state(checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    batches.set_state(state["batches"])
    restore_rng_state(state["rng"])
    for group, base in zip(optimizer.param_groups, schedule.base_lrs):
        group["lr"] = base * lr_at(state["step"])
    return state["step"]


def save_loop(folder, step: int, steps: int, save_every: int, keep: int, weights, optimizer: torch.optim.Optimizer,
              schedule, batches: torch.Generator) -> None:
    """After a plain training loop's step (the teacher's, the unified model's): a checkpoint when one is due (every
    ``save_every`` steps, the last step, or a SIGTERM / Ctrl-C seen by the run ``folder``), then the clean stop if
    one was asked for. ``weights`` has ``save_pretrained``; ``restore_loop`` reads what this writes."""
    stop = folder.stop_signal()
    if (save_every and step % save_every == 0) or step == steps or stop:
        state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "batches": batches.get_state(), "rng": capture_rng_state()}
        folder.save_checkpoint(step, weights, state, keep=keep)
    if stop:
        folder.stop(step, stop)


def resume(trainer, folder: str | Path) -> None:
    """Continue ``trainer`` from a checkpoint folder: the model's weights (strict), then its training state."""
    folder = Path(folder)
    weights = read_weights(folder / WEIGHTS_NAME)
    check_state_dict(trainer.model.state_dict(), weights, str(folder))
    trainer.model.load_state_dict(weights, strict=True)
    trainer.load_state_dict(load_training_state(folder))
