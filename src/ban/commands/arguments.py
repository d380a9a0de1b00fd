"""argparse ``type``s shared by the commands: a bad value is argparse's one-line usage error (exit status 2)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number above zero."""
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number, zero or more."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, not {value}")
    return value


def box_count(text: str) -> str:
    """``adaptive`` or a positive number of boxes per image (kept as text, as BenchSettings takes it)."""
    if text == "adaptive":
        return text
    try:
        return str(positive_int(text))
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"neither 'adaptive' nor a box count: {error}") from None


def distinct(values: list) -> list:
    """``values`` without repeats (first occurrence kept): a value given twice is measured or trained once."""
    return list(dict.fromkeys(values))


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
