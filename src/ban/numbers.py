"""Numbers among plain values (JSON, pickles, configs, metric records): Python's ``bool`` is an ``int``, and never
counts as a number here."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
