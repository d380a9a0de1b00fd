"""The files that describe a prepared dataset directory (``ban prepare vqa2`` / ``ban prepare flickr30k``):
``manifest.json`` (written last: its presence marks a complete dataset), ``dictionary.json`` and, for VQA,
``answers.json``, read with errors that name the file and the field, and checked against each other and the
feature store when a split is opened (:func:`check_manifest_sizes`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ban.data.dictionary import Dictionary
from ban.data.distinct import check_listed_once
from ban.data.feature_setup import CONVERTED
from ban.data.features import LISTING
from ban.data.jsonfile import read_json, read_json_object, require_format_version
from ban.errors import DataError
from ban.numbers import is_int

if TYPE_CHECKING:
    from ban.data.features import FeatureStore

MANIFEST = "manifest.json"
DICTIONARY = "dictionary.json"  # the question/caption vocabulary
ANSWERS = "answers.json"  # VQA: the candidate answers in label order
GLOVE = "glove.npy"  # with --glove: the word table's initial rows
GLOVE_COOCCURRENCE = "glove_cooccurrence.npy"  # VQA with --glove: option c's second table
FORMAT_VERSION = 1  # the manifest's "format_version": what `ban prepare` writes now


def read_manifest(data_dir: str | os.PathLike[str], task: str | None = None) -> dict[str, Any]:
    """``data_dir``'s manifest: a JSON object whose ``"splits"`` is an object (split name → summary) and, when
    ``task`` is given, whose ``"task"`` is ``task`` ("vqa2" or "grounding"); :class:`DataError` otherwise."""
    path = Path(data_dir) / MANIFEST
    if not Path(data_dir).is_dir():
        raise DataError("no such directory (a prepared dataset is the --out folder of `ban prepare`)", path=data_dir)
    if not path.exists():
        check_not_raw_scenes(Path(data_dir))
    manifest = read_json_object(path, missing=f"not a complete prepared dataset (no {MANIFEST}): run `ban prepare` "
                                              "(again)")
    if task is not None and manifest.get("task") != task:
        raise DataError(f"not a {task} dataset (its task is {manifest.get('task')!r})", path=path, field="task")
    if not isinstance(manifest.get("splits"), dict):
        raise DataError("expected an object of splits", path=path, field="splits")
    require_format_version(manifest, FORMAT_VERSION, path)
    return manifest


def check_not_raw_scenes(data_dir: Path) -> None:
    """:class:`DataError` with the command to run when ``data_dir`` holds the raw files `ban synth` writes."""
    from ban.data.synthetic.layout import VQA_SPLITS  # the generator's file plan, read only for this message

    questions, features = (data_dir / VQA_SPLITS[0].questions_file, data_dir / VQA_SPLITS[0].features_file)
    if questions.is_file():
        raise DataError("this is raw data in the layout `ban synth` writes, not a prepared dataset: prepare it with "
                        f"`ban prepare vqa2 --root {questions.parent} --features {features.parent}/*.tsv --out DIR` "
                        "(docs/synthetic.md)", path=data_dir)


def check_split(data_dir: str | os.PathLike[str], manifest: dict[str, Any], split: str) -> None:
    """:class:`DataError` unless the manifest of ``data_dir`` lists ``split``."""
    if split not in manifest["splits"]:
        raise DataError(f"no split {split!r} (it has: {', '.join(manifest['splits'])})",
                        path=Path(data_dir) / MANIFEST, field="splits")


def split_flag(data_dir: str | os.PathLike[str], manifest: dict[str, Any], split: str, name: str,
               default: bool | None = None) -> bool:
    """The true/false ``name`` of the VQA manifest's ``split`` summary (``annotated``; ``official_files``, absent
    from datasets prepared before it and then ``default``), checked to be true or false: a text "false" would
    count as true."""
    summary = manifest["splits"][split]
    value = summary.get(name, default) if isinstance(summary, dict) else None
    if not isinstance(value, bool):
        raise DataError(f"expected true or false, got {value!r}", path=Path(data_dir) / MANIFEST,
                        field=f"splits/{split}/{name}")
    return value


def manifest_size(data_dir: str | os.PathLike[str], manifest: dict[str, Any], field: str) -> int:
    """The manifest's ``field``, checked to be a positive integer (a count or a width)."""
    value = manifest.get(field)
    if not is_int(value) or value < 1:
        raise DataError(f"expected a positive integer, got {value!r}", path=Path(data_dir) / MANIFEST, field=field)
    return value


def check_manifest_size(data_dir: str | os.PathLike[str], manifest: dict[str, Any], field: str, actual: int,
                        found: str) -> None:
    """:class:`DataError` naming the manifest's ``field`` unless it is ``actual``, the size of the file it
    describes (``found`` says what that file holds): files of different preparations put together, which would fail
    only inside the model."""
    recorded = manifest_size(data_dir, manifest, field)
    if recorded != actual:
        raise DataError(f"{recorded}, but {found}: the files of this dataset are not of one preparation; prepare it "
                        "again", path=Path(data_dir) / MANIFEST, field=field)


def check_manifest_sizes(data_dir: str | os.PathLike[str], manifest: dict[str, Any], store: FeatureStore) -> None:
    """:func:`check_manifest_size` of the sizes a split is read with (VQA and grounding) against those the model
    is built with (``Task.model_sizes``): ``padding_index`` and ``num_tokens``, the token count of
    ``dictionary.json``, and ``feature_dim``, the width of the feature ``store``."""
    tokens = len(read_tokens(data_dir))
    check_manifest_size(data_dir, manifest, "padding_index", tokens,
                        f"dictionary.json has {tokens} tokens (the padding index is their count)")
    check_manifest_size(data_dir, manifest, "num_tokens", tokens, f"dictionary.json has {tokens} tokens")
    check_manifest_size(data_dir, manifest, "feature_dim", store.feature_dim,
                        f"the feature store {store.location} holds {store.feature_dim}-d features")


def open_features(data_dir: str | os.PathLike[str]) -> FeatureStore:
    """The feature store of the prepared dataset ``data_dir``: the sources its ``features.json`` lists or, in a
    dataset prepared by an earlier version of ban without that listing, the store in its ``features/``."""
    from ban.data.features import FeatureStore

    data_dir = Path(data_dir)
    converted = data_dir / CONVERTED
    return FeatureStore.open(converted if not (data_dir / LISTING).is_file() and converted.is_dir() else data_dir)


def check_token_ids(tokens: np.ndarray, padding_index: int, path: Path) -> None:
    """:class:`DataError` naming the split file ``path`` unless every token id of ``tokens`` (any shape) is in
    [0, ``padding_index``]: a word of the dictionary or the padding (the model would fail on any other)."""
    if tokens.size and not 0 <= tokens.min() <= tokens.max() <= padding_index:
        raise DataError(f"token indices outside [0, {padding_index}]", path=path, field="tokens")


def load_dictionary(data_dir: str | os.PathLike[str]) -> Dictionary:
    """The question/caption vocabulary of ``data_dir`` (``dictionary.json``)."""
    return Dictionary.load(Path(data_dir) / DICTIONARY)


def read_tokens(data_dir: str | os.PathLike[str]) -> list[str]:
    """The question/caption vocabulary of ``data_dir`` (``dictionary.json``), in index order."""
    return load_dictionary(data_dir).tokens


def read_answers(data_dir: str | os.PathLike[str]) -> list[str]:
    """The candidate answers of a prepared VQA dataset in label order (``answers.json``: a list of strings)."""
    path = Path(data_dir) / ANSWERS
    answers = read_json(path, missing=f"no {ANSWERS}: not a complete prepared VQA dataset")
    if not isinstance(answers, list) or not all(isinstance(answer, str) for answer in answers):
        raise DataError("expected a list of answer strings", path=path)
    check_listed_once(answers, "answer", "each label names one answer", path)
    return answers


def prepared_from(data_dir: str | os.PathLike[str]) -> Path | None:
    """The raw files' folder a prepared dataset was made from (its manifest's ``root``; None for datasets
    prepared before it was recorded)."""
    try:
        root = read_manifest(data_dir).get("root")
    except DataError:
        return None
    return Path(root) if isinstance(root, str) else None
