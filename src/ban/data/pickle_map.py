"""Reading the authors' pickles of plain data without executing anything.

The reference pipeline stores ``{image_id: index}`` maps, its answer list (``trainval_label2ans.pkl``: a list
of str) and its dictionary (``dictionary.pkl``: ``[word2idx, idx2word]``) as pickles (protocol 0 from Python
2, or a newer protocol). Unpickling runs arbitrary code, so instead the opcode stream is parsed with
:func:`pickletools.genops` (which only decodes) and interpreted here for the handful of opcodes that build
ints, strings, lists and dicts. Anything else — a class, a global, a function call — is refused.
"""

from __future__ import annotations

import os
import pickletools
from pathlib import Path

from ban.data.textfile import read_bytes
from ban.errors import DataError
from ban.numbers import is_int

_INT_OPCODES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_UNICODE_OPCODES = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}  # Python 3's str
# Python 2's str (bytes): genops gives them as latin-1 text (protocol 0's only if ASCII); read here as UTF-8
_BYTE_STRING_OPCODES = {"STRING", "SHORT_BINSTRING", "BINSTRING"}
_INT64 = range(-(2**63), 2**63)
_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}
_IGNORED_OPCODES = {"PROTO", "FRAME"}


def read_int_dict(path: str | os.PathLike[str]) -> dict[int, int]:
    """The ``dict[int, int]`` pickled in ``path``; :class:`DataError` if the pickle holds anything else."""
    path = Path(path)
    result = read_plain_pickle(path, missing="image-id map not found (the pickle written next to the HDF5 cache "
                                             "by the reference pipeline)")
    if not isinstance(result, dict) or not all(is_int(k) and is_int(v) for k, v in result.items()):
        raise DataError("the pickle does not hold a dict of ints", path=path)
    return result


def read_plain_pickle(path: str | os.PathLike[str], missing: str) -> object:
    """The ints, strings, lists and dicts pickled in ``path``, built without running the pickle's code;
    :class:`DataError` (``missing`` if there is no file) for anything else."""
    path = Path(path)
    data = read_bytes(path, missing=missing)
    try:
        return _interpret(data)
    except DataError as error:
        raise DataError(error.message, path=path, record=error.record) from None
    except (ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as error:
        raise DataError(f"not a pickle of plain data ({type(error).__name__}: {error})", path=path) from None


def _interpret(data: bytes) -> object:
    """Run the plain-data subset of the pickle machine (ints, strings, lists, dicts) over ``data``'s opcodes."""
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    for opcode, arg, position in pickletools.genops(data):
        name = opcode.name
        if name in _INT_OPCODES:
            if not is_int(arg):
                raise DataError(f"a {type(arg).__name__} where an int is expected", record=f"byte {position}")
            if arg not in _INT64:  # (also keeps dict keys from being crafted to collide in one hash bucket)
                raise DataError("an integer outside the 64-bit range", record=f"byte {position}")
            stack.append(arg)
        elif name in _UNICODE_OPCODES:
            stack.append(arg)
        elif name in _BYTE_STRING_OPCODES:
            stack.append(arg.encode("latin-1").decode("utf-8"))
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name in ("LIST", "APPENDS"):
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            target = [] if name == "LIST" else stack[-1]
            if not isinstance(target, list):
                raise DataError("APPENDS on something that is not a list", record=f"byte {position}")
            target.extend(items)
            if name == "LIST":
                stack.append(target)
        elif name == "APPEND":
            value = stack.pop()
            if not isinstance(stack[-1], list):
                raise DataError("APPEND on something that is not a list", record=f"byte {position}")
            stack[-1].append(value)
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("DICT", "SETITEMS"):
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            if len(items) % 2:
                raise DataError("odd number of items in a dict", record=f"byte {position}")
            target = {} if name == "DICT" else stack[-1]
            if not isinstance(target, dict):
                raise DataError("SETITEMS on something that is not a dict", record=f"byte {position}")
            target.update(zip(items[0::2], items[1::2], strict=True))
            if name == "DICT":
                stack.append(target)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            if not isinstance(stack[-1], dict):
                raise DataError("SETITEM on something that is not a dict", record=f"byte {position}")
            stack[-1][key] = value
        elif name in _PUT_OPCODES:
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in _GET_OPCODES:
            stack.append(memo[arg])
        elif name == "STOP":
            if len(stack) != 1:
                raise DataError("malformed pickle (stack not empty at STOP)", record=f"byte {position}")
            return stack.pop()
        elif name == "FRAME" and position + 9 + arg > len(data):
            raise DataError(f"frame of {arg} bytes runs past the end of the file", record=f"byte {position}")
        elif name not in _IGNORED_OPCODES:
            raise DataError(f"pickle opcode {name} is not allowed: only ints, strings, lists and dicts are accepted",
                            record=f"byte {position}")
    raise DataError("pickle has no STOP opcode (truncated file?)")
