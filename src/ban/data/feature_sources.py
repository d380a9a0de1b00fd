"""Which images a ``--features`` list holds, found before anything is converted.

``ban prepare`` converts TSV files at tens to hundreds of MB/s, so tens of GB take minutes. A question whose image no
source holds, or an image held twice, is found first from what can be read quickly: the TSV files' image ids
(:func:`ban.data.features_tsv.iter_tsv_image_ids`, nothing decoded) and the indexes of the other sources.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence, Set
from pathlib import Path

from tqdm import tqdm

from ban.data.features import FeatureStore, is_tsv_source
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
    tsv = [Path(source) for source in sources if is_tsv_source(source)]
    if converted is None and not all(stat.S_ISREG(path.stat().st_mode) for path in tsv):
        return None
    holders = _holders(sources, tsv, held_once, converted, jump=True, progress=progress)
    if converted is None and tsv and not wanted <= holders.keys():
        holders = _holders(sources, tsv, held_once, converted, jump=False, progress=progress)
    return holders


def _holders(sources: Sequence[str | os.PathLike[str]], tsv: list[Path], held_once: Set[int] | None,
             converted: FeatureStore | None, jump: bool, progress: bool) -> dict[int, str]:
    holders: dict[int, str] = {}
    if converted is not None:
        _add(holders, converted.image_ids.tolist(), f"the conversion of {', '.join(map(str, tsv))}", held_once)
    elif tsv:
        with tqdm(total=sum(path.stat().st_size for path in tsv), desc="reading TSV image ids", unit="B",
                  unit_scale=True, disable=not progress) as bar:
            for path in tsv:
                ids = (image_id for _, image_id in iter_tsv_image_ids(path, jump=jump, on_progress=bar.update))
                _add(holders, ids, str(path), held_once)
    for source in sources:
        if not is_tsv_source(source):
            _add(holders, FeatureStore.open(source).image_ids.tolist(), str(source), held_once)
    return holders


def _add(holders: dict[int, str], image_ids: Iterable[int], source: str, held_once: Set[int] | None) -> None:
    for image_id in image_ids:
        holder = holders.get(image_id)
        if holder is None:
            holders[image_id] = source
        elif held_once is None or image_id in held_once:
            where = f"twice in {source}" if holder == source else f"in more than one source: {holder}, {source}"
            raise DataError(f"image {image_id} appears {where}", path=source, field="image_id")
