"""Plumbing shared by every config dataclass: the error type, dict round trips, and the notebooks' quick switch.

Configs are plain ``@dataclass``es (STYLE habit 5); ``to_dict`` / ``from_dict`` turn them into JSON and back,
checking field names and types so that a hand-edited ``config.json`` fails with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

QUICK_ENV = "DUALTOKEN_LITE_QUICK"


def quick_mode() -> bool:
    """The one switch that shrinks notebook workloads under test (``DUALTOKEN_LITE_QUICK=1``)."""
    return os.environ.get(QUICK_ENV, "0") not in ("", "0", "false", "False")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict``'s output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known fields: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(cls, key)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif names[key].type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # JSON writes 2.0 as 2 when a person edits it
        kwargs[key] = value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


