"""Plumbing shared by every chapter: the user-error types, config dataclasses' dict round trips, atomic files.

Configs are plain ``@dataclass``es; ``to_dict`` / ``from_dict`` turn them into JSON and back,
checking field names and types so that a hand-edited ``config.json`` fails with a message naming the field.

How a command ends (``run_cli``), one line on stderr for anything but success and a bug:

    0    done
    2    a user error (``UserError``): the line names the value and the fix
    3    non-finite values in a training step (``EarlyExit``): the line names the step; the last checkpoint stays
    4    stopped by SIGTERM or Ctrl-C after finishing a step: the line names the checkpoint and the command that
         continues the run
    130  stopped at once by Ctrl-C (a second one while training), 143 by a second SIGTERM
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TRACEBACK_ENV = "DUALTOKEN_LITE_TRACEBACK"  # set to 1 to see the traceback of a user error too
EXIT_USER_ERROR, EXIT_NON_FINITE, EXIT_STOPPED = 2, 3, 4  # exit codes (the module docstring); 128 + N: signal N


class UserError(Exception):
    """Something the user gave is wrong (a flag, a file, a folder, data): the message says what, the value given
    and what to do. Command lines print it in one or two lines and exit 2; any other exception is a bug and keeps
    its traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named does not exist or holds nothing usable."""


class EarlyExit(Exception):
    """A command ends before its end on purpose (stopped by a signal, or by non-finite values): the message is one
    line for stderr (empty: print nothing, as the ranks other than 0 do) and ``exit_code`` the process's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class WriteFailed(UserError):
    """The operating system refused a write (a full disk, a quota, a read-only or vanished folder): the message names
    the path, the error, the space needed and free; the partial file or folder is already removed."""


def os_error_of(err: BaseException) -> OSError | None:
    """The operating system's error behind a failed write: ``err`` itself, the OSError that torch.save wraps into a
    RuntimeError (its ``__context__``), or the one safetensors names in its message ("(os error 28)")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code:
            return OSError(int(code[1]), os.strerror(int(code[1])))
        err = err.__cause__ or err.__context__
    return None


def size_text(count: int) -> str:
    """12_345_678 -> '12.3 MB' (kB, MB or GB)."""
    unit, scale = next((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if count >= s or u == "kB")
    return f"{count / scale:.1f} {unit}"


def write_failed(path: str | os.PathLike, err: OSError, needed: int | None = None) -> WriteFailed:
    """A WriteFailed for ``path``: the OS error, the bytes ``needed`` (if known) and the space free on that disk."""
    where = next((p for p in [Path(path), *Path(path).parents] if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    need = f"it needs about {size_text(needed)}; " if needed else ""
    return WriteFailed(f"cannot write {path}: {err.strerror or err} ({need}{size_text(free)} free on that disk)")


def run_cli(main, argv: list[str] | None = None) -> int:
    """Run a command line's ``main``: a ``UserError`` becomes ``error: ...`` on stderr and exit code 2, an
    ``EarlyExit`` its line and code, a Ctrl-C one line and 130; any other exception is a bug and keeps its traceback."""
    import sys

    show_traceback = os.environ.get(TRACEBACK_ENV, "0") not in ("", "0")
    try:
        code = main(argv)
    except UserError as err:
        if show_traceback:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except EarlyExit as err:
        if show_traceback:
            raise
        if str(err):
            print(err, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if show_traceback:
            raise
        print("stopped: interrupted by Ctrl-C", file=sys.stderr)
        return 130
    return code or 0


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict``'s output, checking every field's type.

    Unknown keys and values of the wrong type are ConfigErrors naming the field, the value and the expected type
    (a hand-edited ``"image_size": "64"`` fails here, not deep inside the model). Ints are accepted for float
    fields (JSON writes 2.0 as 2) and lists for tuple fields.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a JSON object of {cls.__name__} fields, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known fields: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        field_name = f"{where}.{key}" if where else key
        sub = _dataclass_type(cls, key)
        if sub is not None:
            value = from_dict(sub, value, field_name)
        else:
            value = check_type(value, names[key].type, field_name)
        kwargs[key] = value
    return cls(**kwargs)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def missing_fields(cls: type, data: dict, where: str = "") -> list[str]:
    """The fields of a (nested) config dataclass that ``data`` (a ``to_dict`` output) lacks, dotted."""
    missing = []
    for f in dataclasses.fields(cls):
        name = f"{where}{f.name}"
        if f.name not in data:
            missing.append(name)
        elif (sub := _dataclass_type(cls, f.name)) is not None and isinstance(data[f.name], dict):
            missing += missing_fields(sub, data[f.name], f"{name}.")
    return missing


def check_type(value: Any, annotation: str, name: str) -> Any:
    """``value`` as the annotated type (``"int"``, ``"float | None"``, ``"tuple[int, ...]"``, ...), or ConfigError.

    bool is never taken for an int or a float (True is not a patch size); an int is taken for a float.
    """
    options = [part.strip() for part in str(annotation).split("|")]
    for option in options:
        if option == "None" and value is None:
            return None
        if option in _SCALARS:
            kind = _SCALARS[option]
            if isinstance(value, bool) != (kind is bool):
                continue
            if isinstance(value, kind):
                return value
            if kind is float and isinstance(value, int):
                return float(value)
        if option.startswith("tuple[") and isinstance(value, list | tuple):
            inner = option[len("tuple["):-1].split(",")[0].strip()
            return tuple(check_type(v, inner, f"{name}[{i}]") for i, v in enumerate(value))
        if option in ("dict", "Any"):
            return value
    raise ConfigError(f"{name}={value!r} has type {type(value).__name__}; expected {annotation}")


def _dataclass_type(cls: type, name: str) -> type | None:
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def require_finite(cfg: Any, where: str = "") -> None:
    """Every float field of a (nested) config is a finite number: ``--lr inf`` is refused before any work."""
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            require_finite(value, name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{name}={value} is not a finite number; give a finite value")



def require_at_least(cfg: Any, names: tuple[str, ...], minimum: int, where: str = "", note: str = "") -> None:
    """Each named field of ``cfg`` is >= ``minimum``, or ConfigError naming the field (``where.name``) and its value."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(f"{where}{name}={value} must be >= {minimum}{f' ({note})' if note else ''}")


def require_fraction(cfg: Any, names: tuple[str, ...], where: str = "") -> None:
    """Each named field of ``cfg`` lies in [0, 1), or ConfigError naming the field (``where.name``) and its value."""
    for name in names:
        value = getattr(cfg, name)
        if not 0 <= value < 1:
            raise ConfigError(f"{where}{name}={value} must lie in [0, 1)")


def temporary_sibling(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before it is renamed into place: a hidden sibling that names this host and process,
    ``.NAME.tmp-HOST-PID``, so a later sweep knows whose it is (``remove_left_behind``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)$")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def left_behind(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``temporary_sibling`` that this process or a dead process on this host left: safe to
    remove. One of a running process, or of another host (whose processes this one cannot see), is not."""
    match = _TEMPORARY.match(Path(path).name)
    if match is None or match["host"] != socket.gethostname():
        return False
    pid = int(match["pid"])
    return pid == os.getpid() or not process_alive(pid)


def remove_left_behind(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` that ``left_behind`` says are safe to remove; return them."""
    folder = Path(folder)
    removed = []
    for path in sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []:
        if left_behind(path):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write in the ``with`` block; renamed onto ``path`` (after an fsync) when
    the block succeeds, removed when it fails: a reader never sees half a file, and a failed write leaves none."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
