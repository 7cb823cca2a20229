"""What ``--out`` holds, and what a start may do with it: begin, continue, report a finished run, or refuse.

A run folder is never overwritten or mixed with another run by accident (docs/method.md §4):

| ``--out`` holds | no ``--resume`` | ``--resume auto`` | ``--resume RUN`` |
|---|---|---|---|
| nothing | a new run | a new run | refused: no checkpoint there |
| a run without a checkpoint yet | refused (or ``--overwrite``) | a new run in its place | refused: say ``--resume auto`` |
| a run with checkpoints | refused (or ``--overwrite``) | continued from the newest | continued from the newest |
| a finished run | refused (or ``--overwrite``) | its summary is reported | its summary is reported |

A run records the teacher it distils from (``teacher.json``: the spec and a fingerprint of its weights); resuming
with a teacher whose weights differ is refused, since the run's targets would change under it.

Resuming takes the run's saved ``config.json`` as the truth. A flag given on the command line that differs from
it is refused with both values named, except the settings listed in ``RESUMABLE``, which may change and are
reported. A longer ``--max-steps`` stretches the cosine learning-rate schedule to the new total: the rate is
recomputed for the step the run continues from, so it rises back up by the amount the stretched schedule asks for.
Every decision is made before anything is written into the folder, and once (rank 0) under torchrun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dualtoken_lite.settings import UserError, to_dict
from dualtoken_lite.tinyworld.teacher import teacher_fingerprint
from dualtoken_lite.training.arguments import load_run_config
from dualtoken_lite.training.checkpoints import latest_checkpoint, resume_point
from dualtoken_lite.training.config import TrainConfig

# Settings a resumed run may change (anything else must equal the saved config).
RESUMABLE = ("max_steps", "epochs", "log_every", "image_every", "eval_every", "eval_samples", "save_every",
             "keep_checkpoints", "tensorboard", "workers", "threads", "resume", "out", "overwrite")
RUN_FILES = ("config.json", "teacher.json", "metrics.jsonl", "summary.json", "checkpoints", "images", "model", "events")
TEACHER_RECORD = "teacher.json"  # which teacher a run distils from: {"teacher": spec, "fingerprint": ...}


class RunFolderError(UserError):
    """A start would overwrite, mix or misread a run folder; the message offers the flags that do what was meant."""


@dataclass
class Plan:
    """What this start does: "new", "resume" (from ``checkpoint``) or "finished" (report ``summary``)."""

    action: str
    cfg: TrainConfig  # the config to run with: the saved one on resume, plus the allowed changes
    checkpoint: str | None = None
    changed: dict | None = None  # field -> (saved, given) for the settings changed on resume
    summary: dict | None = None


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run."""
    return any((folder / name).exists() for name in RUN_FILES)


def step_of(checkpoint: Path) -> int:
    """The step of a checkpoint folder, from its name (``step_00000500`` -> 500)."""
    return int(checkpoint.name.removeprefix("step_"))


def plan_start(cfg: TrainConfig, given: set[str] | None = None) -> Plan:
    """Decide what this start does with ``cfg.out``; raise RunFolderError instead of losing or mixing work.

    ``given``: the fields the command line set (None = all of them, for a config built in code).
    """
    out = Path(cfg.out)
    if cfg.resume is None:
        if holds_run(out) and not cfg.overwrite:
            raise RunFolderError(f"--out {out} already holds a run; continue it with --resume {out}, write to a new "
                                 "--out folder, or replace it with --overwrite")
        return Plan("new", cfg)
    if cfg.resume == "auto" and latest_checkpoint(out / "checkpoints") is None:
        return Plan("new", dataclasses.replace(cfg, resume=None, overwrite=True))  # nothing to continue: start
    try:
        point = resume_point(cfg.resume, cfg.out)
    except FileNotFoundError:
        folder = Path(cfg.resume)
        why = "it stopped before its first checkpoint" if holds_run(folder) else "nothing was trained there"
        raise RunFolderError(f"--resume {cfg.resume}: no checkpoint there ({why}); start it anew with "
                             f"--resume auto --out {folder} (which starts over when there is nothing to continue)"
                             ) from None
    run_dir = point.parent.parent if point.parent.name == "checkpoints" else point
    merged, changed = merge_with_saved(cfg, run_dir, given)
    check_same_teacher(run_dir, merged.teacher)
    merged.resume = str(point)
    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and (run_dir / "model").is_dir():
        summary = json.loads(summary_file.read_text())
        if summary.get("step") == step_of(point) and (merged.max_steps is None or step_of(point) >= merged.max_steps):
            return Plan("finished", merged, str(point), changed, summary)
    return Plan("resume", merged, str(point), changed)


def merge_with_saved(cfg: TrainConfig, run_dir: Path, given: set[str] | None) -> tuple[TrainConfig, dict]:
    """The saved config of ``run_dir`` with the command line's allowed changes; a disallowed change is refused."""
    if not (run_dir / "config.json").is_file():
        raise RunFolderError(f"--resume {cfg.resume}: {run_dir} has checkpoints but no config.json; it is not a "
                             "run folder this version can continue")
    saved = load_run_config(run_dir)
    mine, theirs = flatten(to_dict(cfg)), flatten(to_dict(saved))
    asked = set(mine) if given is None else {k for k in mine if k in given or k.split(".")[0] in given}
    if "out" not in asked:
        cfg = dataclasses.replace(cfg, out=saved.out)
        mine["out"] = saved.out
    conflicts = {k: (theirs.get(k), mine[k]) for k in sorted(asked) if theirs.get(k) != mine[k]
                 and k.split(".")[0] not in RESUMABLE}
    if conflicts:
        listed = "; ".join(f"--{k.replace('_', '-')}: the run has {a!r}, the command line {b!r}"
                           for k, (a, b) in conflicts.items())
        raise RunFolderError(f"--resume continues the run in {run_dir} with its own settings, and these differ: "
                             f"{listed}. Drop them, or start a new run with another --out")
    if Path(cfg.out).resolve() != run_dir.resolve():
        raise RunFolderError(f"--out {cfg.out} is not the folder of the run being resumed ({run_dir}); drop --out "
                             "or give that folder")
    changed = {k: (theirs.get(k), mine[k]) for k in sorted(asked) if k.split(".")[0] in RESUMABLE
               and k not in ("resume", "out", "overwrite") and theirs.get(k) != mine[k]}
    take = [k for k in RESUMABLE if k in asked or k in ("resume", "out", "overwrite")]
    merged = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in take})
    return merged, changed


def teacher_record(spec: str) -> dict | None:
    """The record of a tiny-world teacher ("shipped" or a teacher folder): its spec and weights' fingerprint.

    None for the other teachers ("backbone", a transformers SigLIP), whose weights come with the run's own config.
    """
    if spec != "shipped" and not (spec and Path(spec).is_dir()):
        return None
    try:
        return {"teacher": spec, "fingerprint": teacher_fingerprint(None if spec == "shipped" else spec)}
    except FileNotFoundError as err:
        raise RunFolderError(str(err)) from None


def check_same_teacher(run_dir: Path, spec: str) -> None:
    """Refuse to resume a run with a teacher other than the one it was trained with (by weights, not by name)."""
    now = teacher_record(spec)
    if now is None:
        return
    saved_file = run_dir / TEACHER_RECORD
    if not saved_file.is_file():
        raise RunFolderError(f"--resume: {run_dir} does not say which teacher it was trained with (no "
                             f"{TEACHER_RECORD}; it predates the tiny SigLIP teacher), so it cannot be continued "
                             f"safely with teacher {now['fingerprint']}; start a new run with another --out")
    saved = json.loads(saved_file.read_text())
    if saved.get("fingerprint") != now["fingerprint"]:
        raise RunFolderError(f"--resume: {run_dir} was trained with teacher {saved.get('fingerprint')} "
                             f"({saved.get('teacher')}), but --teacher {spec} now holds teacher {now['fingerprint']}. "
                             "Resume with the teacher folder the run was made with, or start a new run with "
                             "another --out")


def flatten(d: dict, prefix: str = "") -> dict:
    """{"model": {"pixel_layer": 2}} -> {"model.pixel_layer": 2} (lists as tuples)."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return flat


def check_writable(folder: Path) -> None:
    """Refuse before any work when the run folder (or its checkpoints/) cannot be written."""
    for path in (folder, folder / "checkpoints"):
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path} exists and is not a folder; give another --out")
        target = path if path.exists() else next(p for p in [path, *path.parents] if p.exists())
        if not os.access(target, os.W_OK):
            raise RunFolderError(f"{target} is not writable; give a writable --out")


def clear_run(folder: Path, names: tuple[str, ...] = RUN_FILES) -> None:
    """--overwrite: remove the previous run's files (only ``names``, what a run writes) before the new run starts."""
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

