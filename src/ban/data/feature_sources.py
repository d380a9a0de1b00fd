"""Which images a ``--features`` list holds, found before anything is converted.

``ban prepare`` converts TSV files at tens to hundreds of MB/s, so tens of GB take minutes. A question whose image no
source holds, or an image held twice, is found first from what can be read quickly: the TSV files' image ids
(:func:`ban.data.features_tsv.iter_tsv_image_ids`, nothing decoded) and the indexes of the other sources.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence, Set
from pathlib import Path

from tqdm import tqdm

from ban.data.features import FeatureStore, is_tsv_source, tsv_sources
from ban.data.features_tsv import iter_tsv_image_ids
from ban.errors import DataError


def check_feature_sources(sources: Sequence[str | os.PathLike[str]]) -> None:
    """:class:`DataError` unless at least one feature source is given, each exists, and none is given twice."""
    if not sources:
        raise DataError("no feature files given", field="features")
    seen: set[Path] = set()
    for source in sources:
        if not Path(source).exists():
            raise DataError("feature file not found", path=source, field="features")
        resolved = Path(source).resolve()
        if resolved in seen:
            raise DataError("given twice in --features", path=source, field="features")
        seen.add(resolved)


def images_of_sources(
    sources: Sequence[str | os.PathLike[str]], wanted: Set[int], *, held_once: Set[int] | None = None,
    converted: FeatureStore | None = None, progress: bool = True,
) -> dict[int, str] | None:
    """``{image_id: the source holding it}`` for feature sources as ``ban prepare`` takes them: TSV files and
    sources :meth:`FeatureStore.open` reads. ``converted``, a finished conversion of exactly these TSV files, is
    read instead of them. None when a TSV source is not a regular file (a pipe: the conversion is the only
    reading it allows). :class:`DataError` naming the sources of an image held twice, among ``held_once`` (all
    images if None: every record is converted or referenced).

    The TSV files are read by jumping from line to line; if an image of ``wanted`` is then missing, they are read
    again line by line, so that a file whose records do not all keep the first one's layout cannot make an image
    look missing.
    """
    tsv = tsv_sources(sources)
    if converted is None and not all(stat.S_ISREG(path.stat().st_mode) for path in tsv):
        return None
    holders = _holders(sources, tsv, held_once, converted, jump=True, progress=progress)
    if converted is None and tsv and not wanted <= holders.keys():
        holders = _holders(sources, tsv, held_once, converted, jump=False, progress=progress)
    return holders


def _holders(sources: Sequence[str | os.PathLike[str]], tsv: list[Path], held_once: Set[int] | None,
             converted: FeatureStore | None, jump: bool, progress: bool) -> dict[int, str]:
    holders: dict[int, str] = {}
    lines: dict[int, int] = {}  # image id → the line of its TSV record, for the message naming an image held twice
    if converted is not None:
        _add(holders, lines, _unnumbered(converted), f"the conversion of {', '.join(map(str, tsv))}", held_once)
    elif tsv:
        with tqdm(total=sum(path.stat().st_size for path in tsv), desc="reading TSV image ids", unit="B",
                  unit_scale=True, disable=not progress) as bar:
            for path in tsv:
                records = iter_tsv_image_ids(path, jump=jump, on_progress=bar.update)
                _add(holders, lines, records, str(path), held_once)
    for source in sources:
        if not is_tsv_source(source):
            _add(holders, lines, _unnumbered(FeatureStore.open(source)), str(source), held_once)
    return holders


def _unnumbered(store: FeatureStore) -> Iterator[tuple[None, int]]:
    """``(None, image_id)`` of each image of ``store``: its images have no line numbers."""
    return ((None, image_id) for image_id in store.image_ids.tolist())


def _add(holders: dict[int, str], lines: dict[int, int], records: Iterable[tuple[int | None, int]], source: str,
         held_once: Set[int] | None) -> None:
    """Record ``source`` as the holder of each image of ``records`` (``(line number or None, image_id)``); a source
    without any is refused (an empty file: else only a question's missing image would be named)."""
    empty = True
    for line, image_id in records:
        empty = False
        holder = holders.get(image_id)
        if holder is None:
            holders[image_id] = source
            if line is not None:
                lines[image_id] = line
        elif held_once is None or image_id in held_once:
            first = lines.get(image_id)
            if holder == source:
                where = f"twice in {source}" + (f" (lines {first} and {line})" if line is not None else "")
            else:
                known = [f"{name} line {number}" for name, number in ((holder, first), (source, line))
                         if number is not None]
                where = f"in more than one source: {holder}, {source}" + (f" ({', '.join(known)})" if known else "")
            raise DataError(f"image {image_id} appears {where}", path=source,
                            record=None if line is None else f"line {line}", field="image_id")
    if empty:
        raise DataError("holds no feature records (an empty file?)", path=source)
