"""argparse ``type``s and arguments shared by the commands: a bad value is argparse's one-line usage error (exit
status 2)."""

from __future__ import annotations

import argparse

from ban.data.features import FEATURE_DTYPES


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """``--features`` and ``--feature-dtype`` of ``ban prepare``'s datasets."""
    parser.add_argument("--features", required=True, nargs="+", metavar="FILE",
                        help="bottom-up TSV files (converted into OUT/features; their image ids are checked "
                             "first, except for a pipe such as <(zcat f.tsv.gz), checked after converting), or the "
                             "authors' HDF5 caches (<name>.hdf5 with <name>_imgid2idx.pkl beside it) / feature store "
                             "directories written by `ban prepare` / features.json listings of such sources (used "
                             "in place)")
    parser.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default="float32",
                        help="storage type of converted TSV features (default: %(default)s)")


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
    """``adaptive``, ``bucketed`` or a positive number of boxes per image (kept as text, as BenchSettings takes
    it)."""
    if text in ("adaptive", "bucketed"):
        return text
    try:
        return str(positive_int(text))
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"neither 'adaptive', 'bucketed' nor a box count: {error}") from None


def distinct(values: list) -> list:
    """``values`` without repeats (first occurrence kept): a value given twice is measured or trained once."""
    return list(dict.fromkeys(values))


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
