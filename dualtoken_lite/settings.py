"""Plumbing shared by every chapter: the user-error types, config dataclasses' dict round trips, atomic files.

Configs are plain ``@dataclass``es; ``to_dict`` / ``from_dict`` turn them into JSON and back,
checking field names and types so that a hand-edited ``config.json`` fails with a message naming the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TRACEBACK_ENV = "DUALTOKEN_LITE_TRACEBACK"  # set to 1 to see the traceback of a user error too


class UserError(Exception):
    """Something the user gave is wrong (a flag, a file, a folder, data): the message says what, the value given
    and what to do. Command lines print it in one or two lines and exit 2; any other exception is a bug and keeps
    its traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named does not exist or holds nothing usable."""


def run_cli(main, argv: list[str] | None = None) -> int:
    """Run a command line's ``main``: a ``UserError`` becomes ``error: ...`` on stderr and exit code 2."""
    import sys

    try:
        code = main(argv)
    except UserError as err:
        if os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write in the ``with`` block; renamed onto ``path`` (after an fsync) when
    the block succeeds, removed when it fails: a reader never sees half a file, and a failed write leaves none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
