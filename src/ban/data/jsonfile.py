"""Reading JSON input files with errors that say where the problem is."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ban.data.textfile import read_bytes
from ban.errors import DataError
from ban.numbers import is_int

_HIGH = rb"\\u[dD][89abAB][0-9a-fA-F]{2}"  # a UTF-16 surrogate escape: high, \ud800-\udbff
_LOW = rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # low, \udc00-\udfff; a high one then a low one: a valid pair
# A surrogate escape that is not half of a pair: a high one with no low one after it, or a low one with no high one
# before it (a high one whose backslash is itself escaped, as in \\ud800, is text, not an escape). Cheap on the
# bytes and sure to find every lone one; what it finds may still be text after an escaped backslash, so the decoded
# strings confirm it (json joins each valid pair into one character: a surrogate left in a string is a lone one).
_LONE_SURROGATE_ESCAPE = re.compile(_HIGH + rb"(?!" + _LOW + rb")|" + _LOW + rb"(?<!(?<!\\)" + _HIGH + _LOW + rb")")
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_json(path: str | os.PathLike[str], *, missing: str = "file not found") -> Any:
    """Parse ``path``; otherwise a :class:`DataError` naming the file: ``missing`` when it does not exist (say
    there how to make it), the line and column of a syntax error, why it cannot be read, or where a string holds
    a lone UTF-16 surrogate escape (valid JSON, but not text: writing it out as UTF-8 would fail later)."""
    data = read_bytes(path, missing=missing)
    try:
        value = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: line {error.lineno} column {error.colno}: {error.msg}",
                        path=path) from None
    except UnicodeDecodeError as error:
        raise DataError(f"not valid JSON: not UTF-8 text ({error})", path=path) from None
    except RecursionError:
        raise DataError("not valid JSON: nested too deeply", path=path) from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise DataError(f"not valid JSON ({error})", path=path) from None
    if _LONE_SURROGATE_ESCAPE.search(data):  # the tree is walked only when the bytes show one
        _refuse_lone_surrogates(value, path)
    return value


def _refuse_lone_surrogates(value: Any, path: str | os.PathLike[str]) -> None:
    """:class:`DataError` naming the first string (value or key) of ``value`` that holds a lone surrogate, as
    ``questions[12].question``. Walked with a stack, not recursion: a file as deep as ``json`` reads is walked."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if found := _SURROGATE.search(item):
                raise DataError(f"not valid Unicode: a lone surrogate (\\u{ord(found.group()):04x})", path=path,
                                field=where or None)
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                shown = key.encode("utf-8", "backslashreplace").decode("utf-8")  # a key with a lone surrogate
                key_path = f"{where}.{shown}" if where else shown
                stack += [(child, key_path), (key, key_path)]  # the key is looked at first
        elif isinstance(item, list):
            stack += [(child, f"{where}[{index}]") for index, child in reversed(list(enumerate(item)))]


def read_json_object(path: str | os.PathLike[str], *, missing: str = "file not found") -> dict[str, Any]:
    """:func:`read_json` of a file whose top level must be a JSON object."""
    data = read_json(path, missing=missing)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}", path=path)
    return data


def require_format_version(record: Mapping[str, Any], version: int, path: str | os.PathLike[str]) -> None:
    """Refuse ``record`` unless its ``"format_version"`` is ``version`` (what ban writes now): a file of another
    format is prepared again, not misread."""
    if record.get("format_version") != version:
        raise DataError(f"format version {record.get('format_version')!r}, expected {version}: written by another "
                        "version of ban; rerun `ban prepare`", path=path, field="format_version")


def require(record: Mapping[str, Any], field: str, kind: type, path: str | os.PathLike[str], where: object) -> Any:
    """``record[field]`` checked to be a ``kind`` (bools are not ints; ints are 64-bit, as the prepared arrays
    hold them); :class:`DataError` otherwise."""
    if not isinstance(record, Mapping):
        raise DataError(f"expected an object, got {type(record).__name__}", path=path, record=where)
    value = record.get(field)
    if not (is_int(value) if kind is int else isinstance(value, kind)):
        found = type(value).__name__ if field in record else "nothing"
        raise DataError(f"expected {kind.__name__}, got {found}", path=path, record=where, field=field)
    if kind is int and not -(2**63) <= value < 2**63:
        raise DataError(f"integer {value} outside the 64-bit range", path=path, record=where, field=field)
    return value


def require_list(data: Any, field: str, path: str | os.PathLike[str]) -> list[Any]:
    """``data[field]`` of a top-level object, checked to be a list."""
    value = data.get(field) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise DataError("expected an object with a list of records under this key", path=path, field=field)
    return value
