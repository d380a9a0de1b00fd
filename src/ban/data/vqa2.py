"""VQA 2.0: reading the official files and preparing the dataset directory that training reads.

``prepare_vqa2`` turns the official question/annotation JSON files (under their official names in one
folder), region features (bottom-up TSV files, the authors' HDF5 cache, or an existing store), optionally
GloVe text vectors and Visual Genome QA, into the layout of docs/data-formats.md. The reference's facts followed:
the dictionary covers the four question files in the reference's order (train, val, test, test-dev),
questions are 14 tokens padded at the end, candidates are the normalised ``multiple_choice_answer`` values of
at least ``min_answer_count`` train+val questions, and a question's soft target for a candidate is
``soft_score(number of annotators whose answer string equals it)`` (raw strings, as the reference counted).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections import Counter
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ban.data.answers import select_candidates, soft_score
from ban.data.atomic import atomic_path, write_json, write_with
from ban.data.dictionary import QUESTION_LENGTH, Dictionary
from ban.data.feature_setup import finished_conversion, set_up_features
from ban.data.feature_sources import check_feature_sources, images_of_sources
from ban.data.features import LISTING, FeatureStore
from ban.data.glove import check_glove_file, cooccurrence_embedding, read_glove, report_coverage
from ban.data.jsonfile import require
from ban.data.npyfile import offsets_of, write_npy, write_npz
from ban.data.prepare_output import checked_output
from ban.data.prepared import ANSWERS, DICTIONARY, FORMAT_VERSION, GLOVE, GLOVE_COOCCURRENCE, MANIFEST
from ban.data.tokenizer import tokenize
from ban.data.visual_genome import VGQuestion, load_visual_genome
from ban.data.vqa_dataset import VQADataset
from ban.data.vqa_json import check_annotated_questions, load_annotations, load_questions
from ban.errors import ConfigError, DataError

# Our split name → the official name inside the file names.
OFFICIAL_NAMES: dict[str, str] = {
    "train": "train2014", "val": "val2014", "test-dev": "test-dev2015", "test": "test2015",
}
# The reference built its dictionary from the question files in this order (test-dev adds nothing new).
DICTIONARY_ORDER: tuple[str, ...] = ("train", "val", "test", "test-dev")
ANNOTATED_SPLITS: tuple[str, ...] = ("train", "val")
# Question files whose texts feed the word co-occurrence statistics (test-dev is a subset of test).
COOCCURRENCE_SPLITS: tuple[str, ...] = ("train", "val", "test")
# Visual Genome questions are attached to the VQA split that holds their COCO image.
VG_SPLITS: dict[str, str] = {"train": "vg-train", "val": "vg-val"}
__all__ = [
    "OfficialSplit", "VQADataset", "annotations_path", "available_splits", "prepare_vqa2", "questions_path",
    "read_official_split", "soft_targets",
]
_WHERE_TO_GET = "official VQA v2 files: https://visualqa.org/download.html"


def questions_path(root: str | os.PathLike[str], split: str) -> Path:
    """``ROOT/v2_OpenEnded_mscoco_<official>_questions.json``."""
    return Path(root) / f"v2_OpenEnded_mscoco_{OFFICIAL_NAMES[split]}_questions.json"


def annotations_path(root: str | os.PathLike[str], split: str) -> Path:
    """``ROOT/v2_mscoco_<official>_annotations.json``."""
    return Path(root) / f"v2_mscoco_{OFFICIAL_NAMES[split]}_annotations.json"


def nested_root_hint(root: str | os.PathLike[str], folder: str, holds: Callable[[Path], bool]) -> str:
    """``"; they are in ROOT/FOLDER: give --root ROOT/FOLDER"`` when ``holds(ROOT/FOLDER)``, the files looked for
    in ``root`` being there instead (`ban synth` writes each dataset in such a folder), else ``""``."""
    nested = Path(root) / folder
    return f"; they are in {nested}: give --root {nested}" if holds(nested) else ""


def available_splits(root: str | os.PathLike[str]) -> list[str]:
    """Splits whose question file is in ``root``, in :data:`DICTIONARY_ORDER` (an annotation file without its
    question file is refused: :func:`_check_annotations_have_questions`)."""
    paths = {split: questions_path(root, split) for split in DICTIONARY_ORDER}
    for path in paths.values():  # an entry there that is not a file (a directory) is named, not passed over
        if path.exists() and not path.is_file():
            raise DataError("not a file", path=path)
    splits = [split for split, path in paths.items() if path.is_file()]
    _check_annotations_have_questions(root, splits)
    if not splits:
        hint = nested_root_hint(root, "vqa", lambda nested: any(
            questions_path(nested, split).is_file() for split in DICTIONARY_ORDER))
        raise DataError(f"no official question files (v2_OpenEnded_mscoco_*_questions.json; {_WHERE_TO_GET}){hint}",
                        path=root)
    return splits


def _check_annotations_have_questions(root: str | os.PathLike[str], present: Container[str]) -> None:
    """:class:`DataError` naming the missing question file of the first split whose annotation file is in
    ``root`` (``present``: the splits whose question file is): that split would otherwise be left out, and its
    answers out of the candidates, without a word."""
    for split in ANNOTATED_SPLITS:
        annotations = annotations_path(root, split)
        if split not in present and annotations.is_file():
            raise DataError(f"question file of split {split!r} is missing, but its annotation file {annotations.name} "
                            f"is present ({_WHERE_TO_GET})", path=questions_path(root, split))


@dataclass
class OfficialSplit:
    """One split as read from the official files: question records in file order (the order the reference
    built its dictionary in), and (train, val) the annotation record of each question."""

    name: str
    questions: list[dict[str, Any]]
    annotations: dict[int, dict[str, Any]] | None
    questions_path: Path
    annotations_path: Path | None


def read_official_split(root: str | os.PathLike[str], split: str) -> OfficialSplit:
    """Read and cross-check a split's official files: every annotated split needs exactly one annotation per
    question, with the same image id and a string ``multiple_choice_answer``."""
    q_path = questions_path(root, split)
    questions = load_questions(q_path)
    records = list(questions.values())
    if split not in ANNOTATED_SPLITS:
        return OfficialSplit(split, records, None, q_path, None)
    a_path = annotations_path(root, split)
    if not a_path.is_file():
        raise DataError(f"annotation file of split {split!r} is missing ({_WHERE_TO_GET})", path=a_path)
    annotated = load_annotations(a_path)
    check_annotated_questions(annotated, a_path, questions, q_path)
    annotations: dict[int, dict[str, Any]] = {}
    for index, record in enumerate(annotated):
        require(record, "multiple_choice_answer", str, a_path, f"{index} (question_id={record['question_id']})")
        annotations[record["question_id"]] = record
    for record in records:
        if record["question_id"] not in annotations:
            raise DataError(f"question has no annotation in {a_path.name}", path=q_path,
                            record=f"question_id={record['question_id']}", field="question_id")
    return OfficialSplit(split, records, annotations, q_path, a_path)


def _check_splits_disjoint(official: Mapping[str, OfficialSplit]) -> None:
    """No question id in two splits (a training question scored on val would inflate its score), except that
    test-dev's questions are test's, as in the official files: when both are present, each test-dev question
    must be a test question of the same image."""
    ids = {name: {record["question_id"] for record in split.questions} for name, split in official.items()}
    for first, second in itertools.combinations(ids, 2):
        common = ids[first] & ids[second]
        if common and {first, second} != {"test", "test-dev"}:
            raise DataError(f"also in {official[first].questions_path.name}: a question in two splits",
                            path=official[second].questions_path, record=f"question_id={min(common)}",
                            field="question_id")
    if "test" in official and "test-dev" in official:
        test, test_dev = official["test"], official["test-dev"]
        images = {record["question_id"]: record["image_id"] for record in test.questions}
        for index, record in enumerate(test_dev.questions):
            question_id, image_id = record["question_id"], record["image_id"]
            where = f"{index} (question_id={question_id})"
            if question_id not in images:
                raise DataError(f"not in {test.questions_path.name}: test-dev questions are test questions",
                                path=test_dev.questions_path, record=where, field="question_id")
            if images[question_id] != image_id:
                raise DataError(f"image {image_id}, but {test.questions_path.name} asks this question about image "
                                f"{images[question_id]}", path=test_dev.questions_path, record=where,
                                field="image_id")


def soft_targets(answers: Sequence[Mapping[str, Any]], ans2label: Mapping[str, int]) -> tuple[list[int], list[float]]:
    """Labels and soft scores of one question: each candidate given by ≥ 1 annotator, with
    ``soft_score(count)``; labels in order of first appearance among the answers."""
    counts = Counter(answer["answer"] for answer in answers)
    labels = [ans2label[answer] for answer in counts if answer in ans2label]
    scores = [soft_score(counts[answer]) for answer in counts if answer in ans2label]
    return labels, scores


def prepare_vqa2(
    root: str | os.PathLike[str],
    features: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    glove: str | os.PathLike[str] | None = None,
    visual_genome: str | os.PathLike[str] | None = None,
    min_answer_count: int = 9,
    splits: Sequence[str] | None = None,
    feature_dim: int | None = None,
    feature_dtype: str = "float32",
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare VQA 2.0 from the official files in ``root`` into ``out``; returns the manifest.

    ``features``: TSV files (converted into ``out/features``; a finished conversion of the same files already
    in ``out/features`` is reused), and/or the authors' ``.hdf5`` caches / existing store directories
    (referenced, not copied). ``splits`` limits the prepared splits (default: every split whose question file
    is present); the dictionary always covers every question file present. The inputs are checked and read
    first; the dataset is then built beside ``out`` and swapped in once complete (``manifest.json`` last), so
    a failed or interrupted run leaves a previous dataset at ``out`` whole. ``out`` must be missing, empty or
    an earlier VQA dataset, with no input inside it (:func:`ban.data.prepare_output.checked_output`).
    """
    if min_answer_count < 1:
        raise ConfigError(f"--min-answer-count must be at least 1, got {min_answer_count}")
    out = checked_output(out, "vqa2", {"root": [root], "features": features, "glove": [glove],
                                       "vg": [visual_genome]})
    check_feature_sources(features)
    if glove is not None:
        check_glove_file(glove)
    present = available_splits(root)
    chosen = present if splits is None else list(splits)
    for split in chosen:
        if split not in OFFICIAL_NAMES:
            raise DataError(f"unknown split {split!r}; VQA 2.0 splits are {list(OFFICIAL_NAMES)}")
        if split not in present:
            raise DataError(f"split {split!r} requested but its question file is missing",
                            path=questions_path(root, split))
    official = {split: read_official_split(root, split) for split in present}
    _check_splits_disjoint(official)

    dictionary = Dictionary.build(record["question"] for split in present for record in official[split].questions)
    annotated = [official[split] for split in ANNOTATED_SPLITS if split in present]
    if not annotated:
        raise DataError("no annotated split (train2014 or val2014) to choose answer candidates from", path=root)
    candidates = select_candidates(
        (record["multiple_choice_answer"] for part in annotated for record in part.annotations.values()),
        min_answer_count,
    )
    if not candidates:
        raise DataError(f"no answer occurs in {min_answer_count} questions (--min-answer-count)", path=root)
    ans2label = {answer: label for label, answer in enumerate(candidates)}

    # Everything but the features is read, and what the features must cover is checked, before the conversion:
    # a bad --vg folder, GloVe file or --features list must not cost it.
    vg = None
    if visual_genome is not None:
        vg = load_visual_genome(visual_genome, {VG_SPLITS[s]: {r["image_id"] for r in official[s].questions}
                                                for s in chosen if s in VG_SPLITS}, ans2label)
    word_tables, glove_coverage = None, None
    if glove is not None:
        texts = [record["question"] for split in COOCCURRENCE_SPLITS if split in present
                 for record in official[split].questions]
        word_tables, glove_coverage = _glove_tables(glove, texts + (vg.all_questions if vg else []), dictionary,
                                                    progress)
    prepared_splits = [official[split] for split in chosen]
    holders = _images_with_features(prepared_splits, features, out, progress)
    if holders is not None:
        _check_questions_have_features(prepared_splits, holders)

    with atomic_path(out) as temp:
        temp.mkdir()
        store = set_up_features(features, out, temp, feature_dim=feature_dim, dtype=feature_dtype,
                                progress=progress)
        if holders is None:  # a TSV source read only once (a pipe): its images are known now
            _check_questions_have_features(prepared_splits, store)
        manifest_splits: dict[str, Any] = {}
        for split in chosen:
            manifest_splits[split] = _write_official_split(official[split], temp, dictionary, ans2label, progress)
        if vg is not None:
            for name, questions in vg.kept.items():
                manifest_splits[name] = _write_vg_split(name, questions, temp, dictionary, store, progress)
        if word_tables is not None:
            for name, table in zip((GLOVE, GLOVE_COOCCURRENCE), word_tables, strict=True):
                write_npy(temp / name, table)

        dictionary.save(temp / DICTIONARY)
        write_json(temp / ANSWERS, candidates)
        manifest = {
            "task": "vqa2", "format_version": FORMAT_VERSION, "splits": manifest_splits,
            "num_tokens": len(dictionary), "padding_index": dictionary.padding_index,
            "question_length": QUESTION_LENGTH, "num_answers": len(candidates), "min_answer_count": min_answer_count,
            "feature_dim": store.feature_dim, "num_images": len(store), "features": LISTING,
            "glove": glove is not None, "glove_coverage": glove_coverage, "root": str(Path(root).resolve()),
        }
        write_json(temp / MANIFEST, manifest)
    return manifest


def _images_with_features(
    splits: Sequence[OfficialSplit], features: Sequence[str | os.PathLike[str]], out: Path, progress: bool
) -> dict[int, str] | None:
    """The questions' images the feature sources hold (:func:`ban.data.feature_sources.images_of_sources`; a
    finished conversion of the same TSV files in the previous dataset is read instead of them); None for a pipe."""
    wanted = {record["image_id"] for split in splits for record in split.questions}
    return images_of_sources(features, wanted, converted=finished_conversion(features, out), progress=progress)


def _check_questions_have_features(splits: Sequence[OfficialSplit], holders: Container[int]) -> None:
    """:class:`DataError` naming the first question (file, question id) whose image is not in ``holders``."""
    for split in splits:
        for record in split.questions:
            if record["image_id"] not in holders:
                raise DataError(f"image {record['image_id']} has no region features in the given --features",
                                path=split.questions_path, record=f"question_id={record['question_id']}",
                                field="image_id")


def _write_official_split(
    split: OfficialSplit, out: Path, dictionary: Dictionary, ans2label: Mapping[str, int], progress: bool
) -> dict[str, Any]:
    """Write ``<split>.npz`` and copies of the official files; return the split's manifest entry (every image
    has features: :func:`_check_questions_have_features`)."""
    labels: list[list[int]] = []
    scores: list[list[float]] = []
    answer_types: list[str] = []
    for record in split.questions:
        annotation = None if split.annotations is None else split.annotations[record["question_id"]]
        if annotation is None:
            labels.append([])
            scores.append([])
        else:
            question_labels, question_scores = soft_targets(annotation["answers"], ans2label)
            labels.append(question_labels)
            scores.append(question_scores)
        answer_types.append("" if annotation is None else annotation["answer_type"])
    _write_split_arrays(
        out / f"{split.name}.npz",
        question_ids=[record["question_id"] for record in split.questions],
        image_ids=[record["image_id"] for record in split.questions],
        texts=[record["question"] for record in split.questions],
        labels=labels, scores=scores, answer_types=answer_types, dictionary=dictionary, progress=progress,
    )
    write_with(out / f"{split.name}_questions.json", lambda temp: shutil.copyfile(split.questions_path, temp))
    if split.annotations_path is not None:
        write_with(out / f"{split.name}_annotations.json", lambda temp: shutil.copyfile(split.annotations_path, temp))
    return {"questions": len(split.questions), "annotated": split.annotations is not None,
            "official_files": True, "source": "vqa2"}


def _write_vg_split(
    name: str, questions: Sequence[VGQuestion], out: Path, dictionary: Dictionary, store: FeatureStore,
    progress: bool,
) -> dict[str, Any]:
    """Write ``<name>.npz`` for Visual Genome questions (target 1.0 on their answer); images without
    features are skipped (VG images outside the converted features)."""
    kept = [question for question in questions if question.coco_image_id in store]
    _write_split_arrays(
        out / f"{name}.npz",
        question_ids=[q.question_id for q in kept], image_ids=[q.coco_image_id for q in kept],
        texts=[q.question for q in kept], labels=[[q.label] for q in kept], scores=[[1.0] for _ in kept],
        answer_types=["" for _ in kept], dictionary=dictionary, progress=progress,
    )
    return {"questions": len(kept), "annotated": True, "official_files": False, "source": "visual_genome"}


def _write_split_arrays(
    path: Path, *, question_ids: Sequence[int], image_ids: Sequence[int], texts: Sequence[str],
    labels: Sequence[Sequence[int]], scores: Sequence[Sequence[float]], answer_types: Sequence[str],
    dictionary: Dictionary, progress: bool,
) -> None:
    """One split's arrays (layout in docs/data-formats.md): ``tokens [Q, 14]`` and sparse soft targets."""
    encoded = [dictionary.encode(text) for text in tqdm(texts, desc=f"encoding {path.stem}", unit="q",
                                                          disable=not progress, leave=False)]
    lengths = np.array([len(question_labels) for question_labels in labels], dtype=np.int64)
    arrays = {
        "question_id": np.array(question_ids, dtype=np.int64),
        "image_id": np.array(image_ids, dtype=np.int64),
        "tokens": np.array(encoded, dtype=np.int32).reshape(-1, QUESTION_LENGTH),
        "target_offsets": offsets_of(lengths),
        "target_labels": np.array([label for row in labels for label in row], dtype=np.int32),
        "target_scores": np.array([score for row in scores for score in row], dtype=np.float32),
        "answer_type": np.array(answer_types, dtype=str),
    }
    write_npz(path, arrays)


def _glove_tables(
    glove: str | os.PathLike[str], texts: Sequence[str], dictionary: Dictionary, progress: bool
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, int]]:
    """The contents of ``glove.npy`` ``[num_tokens, D]`` and ``glove_cooccurrence.npy`` ``[num_tokens, D]``
    (option c's second table, mixed from the words each word co-occurs with in ``texts``), and the manifest's
    ``glove_coverage`` (:func:`ban.data.glove.report_coverage`) over the words looked up: the dictionary's and
    those of ``texts`` outside it."""
    words = list(dictionary.tokens)
    index = {word: i for i, word in enumerate(words)}
    token_lists = []
    for text in texts:
        tokens = tokenize(text)
        for token in tokens:
            if token not in index:
                index[token] = len(words)
                words.append(token)
        token_lists.append([index[token] for token in tokens])
    vectors, found = read_glove(glove, words, progress=progress)
    tables = vectors[: len(dictionary)], cooccurrence_embedding(token_lists, len(dictionary), vectors)
    return tables, report_coverage(glove, found, len(words))

