"""What a start may do with a run folder: begin, continue, report a finished run, or refuse (docs/method.md §4).

    plan = plan_start(cfg, rules, given)   # Plan("new" | "resume" | "finished", cfg, checkpoint, changed, summary)

``cfg`` is any config dataclass with ``out``, ``resume`` and ``overwrite`` fields; ``rules`` (a ``RunRules``) says
what that kind of trainer writes, which settings a resume may change and how many steps a config asks for. The
folder is ``--out``, or the one ``--resume RUN`` names when ``--out`` is not given:

| the folder holds | no ``--resume`` | ``--resume auto`` | ``--resume RUN`` |
|---|---|---|---|
| nothing, or only files a run does not write | a new run | a new run | refused: no checkpoint there |
| a run without a checkpoint yet | refused (or ``--overwrite``) | a new run in its place | refused: say ``--resume auto`` |
| a run with checkpoints | refused (or ``--overwrite``) | continued from the newest | continued from the newest |
| a finished run | refused (or ``--overwrite``) | its summary is reported | its summary is reported |

Resuming takes the run's saved ``config.json`` as the truth. A setting given on the command line that differs from
it is refused with both values named, except those in ``rules.resumable``, which may change and are reported; a
``--out`` other than the resumed run's folder is refused. A longer run stretches the cosine learning-rate schedule
to the new total. A trainer may refuse a resume for a reason of its own (``rules.check_resume``: the tokenizer
trainer refuses a teacher whose weights differ from the run's, training.teacher_record). The plan is made before
anything is written, while holding the folder's lock (training.run_folder).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualtoken_lite.settings import ConfigError, from_dict, missing_fields, to_dict
from dualtoken_lite.training.checkpoints import latest_checkpoint, resume_point
from dualtoken_lite.training.run_lock import RunFolderError

CONTROL = ("resume", "out", "overwrite")  # how a start is asked for; never compared with the saved config


@dataclass(frozen=True)
class RunRules:
    """What the run-folder code needs to know about one kind of trainer."""

    command: str  # how a user starts it: "python -m dualtoken_lite.train" (the continue command is built from it)
    files: tuple[str, ...]  # what its runs write in the folder; --overwrite removes these and nothing else
    resumable: tuple[str, ...]  # config fields a resume may change (dotted; a prefix covers the fields below it)
    load_config: Callable[[Path], Any]  # a run folder -> the config its config.json holds (strictly checked)
    total_steps: Callable[[Any], int | None]  # the steps a config asks for (None: known once the data is read)
    check_resume: Callable[[Any, Path], None] | None = None  # (config to run with, run folder) -> None, or raise
    #                                                          RunFolderError when that run cannot go on with it


@dataclass
class Plan:
    """What this start does: "new", "resume" (from ``checkpoint``) or "finished" (report ``summary``)."""

    action: str
    cfg: Any  # the config to run with: the saved one on resume, plus the allowed changes
    checkpoint: str | None = None
    changed: dict | None = None  # field -> (saved, given) for the settings changed on resume
    summary: dict | None = None


def holds_run(folder: Path, rules: RunRules) -> bool:
    """Whether ``folder`` holds (part of) a run of this kind (files a run does not write do not count)."""
    return any((folder / name).exists() for name in rules.files)


def step_of(checkpoint: Path) -> int:
    """The step of a checkpoint folder, from its name (``step_00000500`` -> 500)."""
    return int(checkpoint.name.removeprefix("step_"))


def asked_fields(cfg: Any, given: set[str] | None) -> set[str]:
    """The dotted fields the command line set (``given`` names fields or their parents; None: all of them)."""
    names = flatten(to_dict(cfg))
    if given is None:
        return set(names)
    return {k for k in names if any(".".join(k.split(".")[:i]) in given for i in range(1, k.count(".") + 2))}


def target_folder(cfg: Any, given: set[str] | None) -> Path:
    """The folder a start writes to: ``--out``, or the run ``--resume RUN`` names when ``--out`` was not given."""
    if cfg.resume in (None, "auto") or "out" in asked_fields(cfg, given):
        return Path(cfg.out)
    folder = Path(cfg.resume)
    return folder.parent.parent if folder.parent.name == "checkpoints" else folder


def plan_start(cfg: Any, rules: RunRules, given: set[str] | None = None) -> Plan:
    """Decide what this start does with its folder; raise RunFolderError instead of losing or mixing work.

    ``given``: the fields the command line set (None = all of them, for a config built in code).
    """
    out = target_folder(cfg, given)
    if cfg.resume is None:
        if holds_run(out, rules) and not cfg.overwrite:
            raise RunFolderError(f"--out {out} already holds a run; continue it with --resume {out}, write to a new "
                                 "--out folder, or replace it with --overwrite")
        return Plan("new", cfg)
    if cfg.resume == "auto" and latest_checkpoint(out / "checkpoints") is None:
        return Plan("new", dataclasses.replace(cfg, resume=None, overwrite=True))  # nothing to continue: start
    try:
        point = resume_point(cfg.resume, out)
    except FileNotFoundError:
        folder = Path(cfg.resume)
        why = "it stopped before its first checkpoint" if holds_run(folder, rules) else "nothing was trained there"
        raise RunFolderError(f"--resume {cfg.resume}: no checkpoint there ({why}); start it anew with "
                             f"--resume auto --out {folder} (which starts over when there is nothing to continue)"
                             ) from None
    run_dir = point.parent.parent if point.parent.name == "checkpoints" else point
    merged, changed = merge_with_saved(cfg, run_dir, given, rules)
    if rules.check_resume is not None:  # what only the trainer knows (the tokenizer's: the same teacher)
        rules.check_resume(merged, run_dir)
    merged.resume = str(point)
    summary_file, total = run_dir / "summary.json", rules.total_steps(merged)
    if summary_file.is_file() and (run_dir / "model").is_dir():
        summary = json.loads(summary_file.read_text())
        if summary.get("step") == step_of(point) and (total is None or step_of(point) >= total):
            return Plan("finished", merged, str(point), changed, summary)
    return Plan("resume", merged, str(point), changed)


def saved_config_loader(config_class: type) -> Callable[[Path], Any]:
    """``RunRules.load_config`` for a trainer whose config is the dataclass ``config_class``: a run folder's
    config.json, every field present and of its type (a file from another version is refused, naming the fields)."""
    def load(folder: Path) -> Any:
        path = folder / "config.json"
        data = json.loads(path.read_text())
        missing = missing_fields(config_class, data)
        if missing:
            raise ConfigError(f"{path} lacks the field(s) {missing}: it was not written by this version of "
                              "dualtoken_lite's trainer; start a new run (--out) instead of resuming it")
        return from_dict(config_class, data, str(path))

    return load


def merge_with_saved(cfg: Any, run_dir: Path, given: set[str] | None, rules: RunRules) -> tuple[Any, dict]:
    """The saved config of ``run_dir`` with the command line's allowed changes; a disallowed change is refused."""
    if not (run_dir / "config.json").is_file():
        raise RunFolderError(f"--resume {cfg.resume}: {run_dir} has checkpoints but no config.json; it is not a "
                             "run folder this version can continue")
    saved = rules.load_config(run_dir)
    asked = asked_fields(cfg, given)
    if "out" not in asked:
        cfg = dataclasses.replace(cfg, out=str(run_dir))
    if Path(cfg.out).resolve() != run_dir.resolve():
        raise RunFolderError(f"--out {cfg.out} is not the folder of the run being resumed ({run_dir}); drop --out "
                             "or give that folder")
    mine, theirs = flatten(to_dict(cfg)), flatten(to_dict(saved))
    may_change = {k for k in asked if k in CONTROL or _covered(k, rules.resumable)}
    conflicts = {k: (theirs.get(k), mine[k]) for k in sorted(asked - may_change) if theirs.get(k) != mine[k]}
    if conflicts:
        listed = "; ".join(f"--{k.replace('_', '-')}: the run has {a!r}, the command line {b!r}"
                           for k, (a, b) in conflicts.items())
        raise RunFolderError(f"--resume continues the run in {run_dir} with its own settings, and these differ: "
                             f"{listed}. Drop them, or start a new run with another --out")
    merged = copy.deepcopy(saved)
    for key in sorted(may_change | set(CONTROL)):
        _set_dotted(merged, key, _get_dotted(cfg, key))
    changed = {k: (theirs.get(k), mine[k]) for k in sorted(may_change - set(CONTROL)) if theirs.get(k) != mine[k]}
    return merged, changed


def _covered(key: str, names: tuple[str, ...]) -> bool:
    """Whether ``key`` ("loop.steps") or a parent of it ("loop") is one of ``names``."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in names for i in range(1, len(parts) + 1))


def _get_dotted(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _set_dotted(obj: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


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
        if not target.is_dir():
            raise RunFolderError(f"{target} is a file, so {folder} cannot be made; give another --out")
        if not os.access(target, os.W_OK):
            raise RunFolderError(f"{target} is not writable; give a writable --out")


def clear_run(folder: Path, names: tuple[str, ...]) -> None:
    """Remove a run's files (only ``names``, what a run writes), for --overwrite or an undone start."""
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
