"""``features.json``: a listing of feature sources read in place, seen as one store.

``ban prepare`` writes one into each prepared dataset: the sources it references (the authors' HDF5 caches, store
directories) rather than copies, each outside the dataset with its identity at that time, so that opening the
dataset later notices a source prepared again or replaced since. :meth:`ban.data.features.FeatureStore.open`
reads such a file (or a folder holding one) through :func:`open_sources_file`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ban.data.atomic import write_json
from ban.data.features import LISTING, SOURCE_KINDS, STORE_META, FeatureStore, UnionFeatureStore
from ban.data.jsonfile import read_json
from ban.data.textfile import read_bytes, resolve_path
from ban.errors import DataError


def open_sources_file(path: Path) -> FeatureStore:
    """Open the sources of a ``features.json``: ``{"sources": [path, ...]}``, absolute or relative to (and then
    inside) its folder, and optionally ``"identities"``: per source, None or the :func:`source_identity` it had
    when the file was written, checked here (:class:`DataError` naming the source and the file that changed)."""
    data = read_json(path)
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise DataError("expected a non-empty list of paths: a .json is read as a features.json listing "
                        f"({{\"sources\": [path, …]}}); {SOURCE_KINDS}", path=path, field="sources")
    folder = resolve_path(path.parent)
    for source in sources:
        if not Path(source).is_absolute() and not resolve_path(folder / source, "sources").is_relative_to(folder):
            raise DataError(f"relative source {source!r} leads outside {folder}", path=path, field="sources")
        if not (path.parent / source).exists():
            raise DataError(f"source {source} is not there (moved or deleted?): put it back, or prepare the dataset "
                            "again", path=path, field="sources")
    _check_identities(path, sources, data.get("identities"))
    stores = [FeatureStore.open(path.parent / source) for source in sources]
    return stores[0] if len(stores) == 1 else UnionFeatureStore(stores, description=str(path))


def write_sources_file(path: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]]) -> None:
    """Write a ``features.json`` listing existing sources (store directories, HDF5 caches, listings): a source
    inside the file's folder is recorded relative to it (the folder can move, and the source with it), any other
    by its absolute path and, under ``"identities"`` (None for the sources inside), its :func:`source_identity`,
    so that opening the file later notices a source prepared again or replaced since."""
    folder = Path(path).resolve().parent
    entries: list[str] = []
    identities: list[dict[str, dict[str, Any]] | None] = []
    for source in sources:
        resolved = Path(source).resolve()
        inside = resolved.is_relative_to(folder)
        entries.append(str(resolved.relative_to(folder)) if inside else str(resolved))
        identities.append(None if inside else source_identity(resolved))
    write_json(path, {"sources": entries, "identities": identities})


def source_identity(source: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """What identifies a feature source read in place, cheaply (no data file is read): file path → stamp.

    A store directory: the SHA-256 of its ``store.json`` (a store is never changed in place; preparing it again
    writes a new ``store.json``, which records the stamps of the files converted); an HDF5 cache: size and
    modification time of the ``.hdf5`` and of its image-id pickle; a ``features.json`` (or a folder holding
    one): the SHA-256 of that file and the identities of its sources.
    """
    source = Path(source)
    if source.is_dir():
        if (source / STORE_META).is_file():
            return {str(source / STORE_META): _sha256(source / STORE_META)}
        source = source / LISTING
    if source.suffix == ".json":
        identity = {str(source): _sha256(source)}
        data = read_json(source) if source.is_file() else None
        for inner in data.get("sources", []) if isinstance(data, dict) else []:
            identity.update(source_identity(source.parent / inner))
        return identity
    from ban.data.features_hdf5 import default_image_id_map  # h5py only where an HDF5 cache is named

    return {str(file): _size_and_time(file) for file in (source, default_image_id_map(source))}


def _sha256(path: Path) -> dict[str, Any]:
    if not path.is_file():  # a missing file is part of an identity (opening the source then says what is wrong)
        return {"missing": True}
    return {"sha256": hashlib.sha256(read_bytes(path)).hexdigest()}


def _size_and_time(path: Path) -> dict[str, Any]:
    try:
        stat = path.stat()
    except OSError:
        return {"missing": True}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_identities(path: Path, sources: list[str], identities: Any) -> None:
    """:class:`DataError` for the first source of a ``features.json`` at ``path`` whose recorded identity (see
    :func:`write_sources_file`; files written before have none) differs from its identity now."""
    if identities is None:
        return
    if not isinstance(identities, list) or len(identities) != len(sources) \
            or not all(identity is None or isinstance(identity, dict) for identity in identities):
        raise DataError(f"expected a list of {len(sources)} objects or nulls, one per source", path=path,
                        field="identities")
    for source, recorded in zip(sources, identities, strict=True):
        if recorded is None:
            continue
        current = source_identity(path.parent / source)
        changed = sorted(set(recorded) ^ set(current) | {file for file in set(recorded) & set(current)
                                                           if recorded[file] != current[file]})
        if changed:
            raise DataError(f"source {source} changed since this dataset was prepared ({', '.join(changed)} "
                            "differs): prepare it again", path=path, field="sources")
