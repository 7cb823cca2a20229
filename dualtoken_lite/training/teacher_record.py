"""Which teacher a tokenizer run distils from: ``RUN/teacher.json``, checked whenever the run is resumed.

    record = teacher_record(cfg.teacher)      # {"teacher": spec, "fingerprint": ...}, or None (paper-scale teachers)
    check_same_teacher(run_dir, cfg.teacher)  # raise RunFolderError when the weights differ from the run's

The distillation targets are the teacher's features (docs/method.md §3): a run continued with other teacher weights
would train half its steps towards one target and half towards another. A tiny-world teacher ("shipped", or a
folder written by ``python -m dualtoken_lite teacher``) is named by a fingerprint of its weights, not by its path, so
a retrained ``data/teacher/`` is caught and a copied folder is not refused. Paper-scale teachers ("backbone", a
transformers SigLIP) are fixed by the run's own config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from dualtoken_lite.tinyworld.teacher import teacher_fingerprint
from dualtoken_lite.training.run_lock import RunFolderError

TEACHER_RECORD = "teacher.json"  # the record's file name in a run folder


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


def record_text(spec: str) -> dict[str, str]:
    """``RunFolder.begin``'s records for a run distilling from ``spec``: {"teacher.json": text}, or {} (no record)."""
    record = teacher_record(spec)
    return {TEACHER_RECORD: json.dumps(record, indent=2) + "\n"} if record is not None else {}


def check_same_teacher(run_dir: Path, spec: str) -> None:
    """Refuse to resume a run with a teacher other than the one it was trained with (by weights, not by name)."""
    now = teacher_record(spec)
    if now is None:
        return
    saved_file = Path(run_dir) / TEACHER_RECORD
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
