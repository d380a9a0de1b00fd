"""The field types of a configuration dataclass, enforced: a value read from JSON or given in Python that does not
fit its field's type is a :class:`ConfigError` naming the setting, not a failure deep inside a model."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from ban.errors import ConfigError


def check_types(config: Any, what: str) -> None:
    """Check every field of the dataclass instance ``config`` against its type (bool is not int; an int is a
    float; floats must be finite; a tuple may be given as a list); :class:`ConfigError` naming the first value
    that does not fit, as ``{what} setting 'name'``."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not _fits(value, hints[field.name]):
            raise ConfigError(f"{what} setting {field.name!r}: {value!r} does not fit its type, "
                              f"{_describe(hints[field.name])}")


def check_known(cls: type, names: typing.Iterable[str], what: str) -> None:
    """:class:`ConfigError` naming the first of ``names`` that is not a field of the dataclass ``cls`` (as
    ``{what} setting 'name'``) and the fields there are."""
    known = {field.name for field in dataclasses.fields(cls)}
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown {what} setting {name!r}; known: {', '.join(sorted(known))}")


def _describe(hint: Any) -> str:
    """A type hint in words: ``int``, ``finite float``, ``tuple[float, ...]``."""
    if hint is float:
        return "finite float"
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(item, args[0]) for item in value)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, hint)
