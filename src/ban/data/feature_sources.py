"""Which images a ``--features`` list holds, found before anything is converted.

``ban prepare`` converts TSV files at tens of MB/s, so tens of GB take many minutes. A question whose image no
source holds, or an image held by two sources, is found first from what can be read quickly: the TSV files' first
field (:func:`ban.data.features_tsv.iter_tsv_image_ids`, nothing decoded) and the indexes of the other sources.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from ban.data.features import FeatureStore, is_tsv_source
from ban.data.features_tsv import iter_tsv_image_ids
from ban.errors import DataError


def images_of_sources(
    sources: Sequence[str | os.PathLike[str]], *, converted: FeatureStore | None = None, progress: bool = True
) -> dict[int, str]:
    """``{image_id: the source holding it}`` for feature sources as ``ban prepare`` takes them: TSV files and
    sources :meth:`FeatureStore.open` reads. ``converted``, a finished conversion of exactly these TSV files, is
    read instead of them. :class:`DataError` naming both sources for an image that two of them hold."""
    tsv = [Path(source) for source in sources if is_tsv_source(source)]
    holders: dict[int, str] = {}
    if converted is not None:
        _add(holders, converted.image_ids.tolist(), f"the conversion of {', '.join(map(str, tsv))}")
    elif tsv:
        total = sum(path.stat().st_size for path in tsv)
        with tqdm(total=total, desc="reading TSV image ids", unit="B", unit_scale=True, disable=not progress) as bar:
            for path in tsv:
                _add(holders, (image_id for _, image_id in iter_tsv_image_ids(path, on_progress=bar.update)),
                     str(path))
    for source in sources:
        if not is_tsv_source(source):
            _add(holders, FeatureStore.open(source).image_ids.tolist(), str(source))
    return holders


def _add(holders: dict[int, str], image_ids: Iterable[int], source: str) -> None:
    for image_id in image_ids:
        holder = holders.setdefault(image_id, source)
        if holder != source:
            raise DataError(f"image {image_id} appears in more than one source: {holder}, {source}", path=source,
                            field="image_id")
