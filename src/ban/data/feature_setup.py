"""A prepared dataset's region features, from ``ban prepare``'s ``--features`` sources: bottom-up TSV files
converted into ``features/`` (or the finished conversion of the same files in the previous dataset reused), every
other source (the authors' HDF5 caches, store directories) referenced where it lies, all listed in
``features.json``."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ban.data.features import LISTING, FeatureRecord, FeatureStore, NpyFeatureStore, is_tsv_source, tsv_sources
from ban.data.features_listing import write_sources_file
from ban.data.features_tsv import iter_tsv_files
from ban.data.features_writer import is_complete_store, source_stamps, write_feature_store
from ban.errors import DataError

CONVERTED = "features"  # the conversion's directory in the dataset


def conversion_identity(tsv: Sequence[Path], images: Collection[int] | None) -> list[dict[str, Any]]:
    """What a conversion is made from, as its ``store.json`` records it: the TSV files' stamps
    (:func:`ban.data.features_writer.source_stamps`) and, when only ``images`` were kept, a digest of their ids."""
    identity = source_stamps(tsv)
    if images is not None:
        ids = np.sort(np.fromiter(images, dtype=np.int64, count=len(images)))
        identity.append({"images_sha256": hashlib.sha256(ids.tobytes()).hexdigest()})
    return identity


def finished_conversion(sources: Sequence[str | os.PathLike[str]], previous: Path,
                        images: Collection[int] | None = None) -> FeatureStore | None:
    """The conversion of exactly these TSV sources (keeping ``images``, when given) that the previous dataset at
    ``previous`` holds, opened; None when there is none, or it is damaged (then the TSV files are read again)."""
    tsv = tsv_sources(sources)
    if not tsv:
        return None
    store, _ = _previous_conversion(previous / CONVERTED, conversion_identity(tsv, images))
    return store


def _previous_conversion(directory: Path, identity: list[dict[str, Any]]
                         ) -> tuple[NpyFeatureStore | None, DataError | None]:
    """The finished conversion of ``identity``'s files at ``directory``, opened (its files checked whole) → (it,
    None); (None, None) when there is none; (None, the error) when it is there but damaged (a file cut short…)."""
    if not is_complete_store(directory, identity):
        return None, None
    try:
        return NpyFeatureStore(directory), None
    except DataError as error:
        return None, error


def set_up_features(sources: Sequence[str | os.PathLike[str]], previous: Path, build: Path, *,
                    feature_dim: int | None = None, dtype: str = "float32", images: Collection[int] | None = None,
                    on_record: Callable[[FeatureRecord], None] | None = None, progress: bool = True) -> FeatureStore:
    """Convert the TSV sources into ``build/features`` — keeping only ``images`` when given, ``on_record`` seeing
    each record kept as it streams past — or hard-link the finished conversion of the same files from the
    previous dataset at ``previous`` when it is whole, in ``dtype`` and of ``feature_dim`` (then ``on_record``
    sees nothing; a damaged one is said on stderr and converted again); write ``build/features.json`` listing the
    conversion first, then every other source; → the store that listing opens (checked to be ``feature_dim``-d
    when given)."""
    tsv = tsv_sources(sources)
    listed = [Path(source) for source in sources if not is_tsv_source(source)]
    feature_dim = _common_width(listed, feature_dim)  # the TSV records must have it too: checked as they stream
    if tsv:
        identity = conversion_identity(tsv, images)
        reusable, damage = _previous_conversion(previous / CONVERTED, identity)
        if damage is not None:
            print(f"ban prepare: the previous conversion in {previous / CONVERTED} cannot be reused (damaged or of an "
                  f"older format: {damage.path or 'store.json'}); converting the TSV files again", file=sys.stderr)
        if reusable is not None and reusable.meta["dtype"] == dtype and feature_dim in (None, reusable.feature_dim):
            shutil.copytree(previous / CONVERTED, build / CONVERTED, copy_function=_link_or_copy)
        else:
            records = _kept(iter_tsv_files(tsv, feature_dim=feature_dim, progress=progress), images, on_record)
            write_feature_store(records, build / CONVERTED, feature_dim=feature_dim, dtype=dtype, sources=identity,
                                progress=False)
        listed.insert(0, build / CONVERTED)
    write_sources_file(build / LISTING, listed)
    store = FeatureStore.open(build / LISTING)
    if feature_dim is not None and store.feature_dim != feature_dim:
        raise DataError(f"features are {store.feature_dim}-d, expected {feature_dim} (--feature-dim)",
                        path=build / LISTING, field="feature_dim")
    return store


def _common_width(listed: Sequence[Path], feature_dim: int | None) -> int | None:
    """The feature width the sources read in place share, and ``feature_dim`` when given (None: no such source
    and no width given); :class:`DataError` naming the sources of other widths, before any TSV is converted."""
    widths = {str(source): FeatureStore.open(source).feature_dim for source in listed}
    expected = feature_dim if feature_dim is not None else next(iter(widths.values()), None)
    other = {source: width for source, width in widths.items() if width != expected}
    if other:
        named = ", ".join(f"{source} ({width}-d)" for source, width in widths.items())
        wanted = " (--feature-dim)" if feature_dim is not None else ""
        raise DataError(f"features of another width than {expected}{wanted}: {named}", path=next(iter(other)),
                        field="feature_dim")
    return expected


def _kept(records: Iterator[FeatureRecord], images: Collection[int] | None,
          on_record: Callable[[FeatureRecord], None] | None) -> Iterator[FeatureRecord]:
    for record in records:
        if images is None or record.image_id in images:
            if on_record is not None:
                on_record(record)
            yield record


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link ``source`` as ``target`` (a store's files are never changed in place, so the previous dataset
    and the new one can share them), copying where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
