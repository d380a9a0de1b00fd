"""Visual Genome QA as extra VQA training questions (the paper's "+VG" setting).

Inputs (Visual Genome v1.2): ``question_answers.json`` — a list of images ``{"id": vg_image_id, "qas": [
{"qa_id", "question", "answer", …}]}`` — and ``image_data.json`` — a list of images with ``image_id`` (``id``
in older releases) and ``coco_id`` (null for non-COCO images). Each image is listed once in ``image_data.json``,
every image of ``question_answers.json`` is listed there, and no two questions share a ``qa_id`` (``id`` in older
releases). A question is kept when its image has a COCO id among the images of the VQA split, and its normalised
answer is a candidate; its target is 1.0 on that answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from ban.data.answers import preprocess_answer
from ban.data.jsonfile import read_json, require
from ban.errors import DataError
from ban.numbers import is_int

QUESTIONS_FILE = "question_answers.json"
IMAGES_FILE = "image_data.json"
_WHERE_TO_GET = "Visual Genome v1.2 QA, https://visualgenome.org/api/v0/api_home.html"


@dataclass(frozen=True)
class VGQuestion:
    """One kept Visual Genome question: ids, text, and the label of its (normalised) answer."""

    question_id: int
    coco_image_id: int
    question: str
    label: int


def coco_ids_of_vg_images(path: str | os.PathLike[str]) -> dict[int, int | None]:
    """VG image id → COCO image id (None for a VG image that is not a COCO image), for every image listed; an
    image listed twice is refused (which of its COCO ids would hold?)."""
    records = read_json(path, missing=f"file not found ({_WHERE_TO_GET})")
    if not isinstance(records, list):
        raise DataError("expected a list of image records", path=path)
    mapping: dict[int, int | None] = {}
    first_index: dict[int, int] = {}
    for index, record in enumerate(records):
        key = "image_id" if isinstance(record, dict) and "image_id" in record else "id"
        image_id = require(record, key, int, path, index)
        where = f"{index} (image_id={image_id})"
        if image_id in first_index:
            raise DataError(f"image listed twice, first as record {first_index[image_id]}", path=path,
                            record=where, field=key)
        first_index[image_id] = index
        coco_id = record.get("coco_id")
        if coco_id is not None and not is_int(coco_id):
            raise DataError(f"expected int or null, got {type(coco_id).__name__}", path=path, record=where,
                            field="coco_id")
        mapping[image_id] = coco_id
    return mapping


@dataclass
class VisualGenomeQA:
    """What :func:`load_visual_genome` found: the kept questions per split, and the text of every question
    (all images, kept or not — the reference's word co-occurrence statistics use them all)."""

    kept: dict[str, list[VGQuestion]]
    all_questions: list[str]


def load_visual_genome(
    directory: str | os.PathLike[str], split_images: Mapping[str, Set[int]], ans2label: Mapping[str, int]
) -> VisualGenomeQA:
    """The VG questions usable for each split: ``split_images`` maps a split name to its COCO image ids;
    ``ans2label`` maps candidate answers to labels. Kept questions are in file order."""
    directory = Path(directory)
    coco_of = coco_ids_of_vg_images(directory / IMAGES_FILE)
    path = directory / QUESTIONS_FILE
    images = read_json(path, missing=f"file not found ({_WHERE_TO_GET})")
    if not isinstance(images, list):
        raise DataError("expected a list of image records", path=path)
    kept: dict[str, list[VGQuestion]] = {split: [] for split in split_images}
    all_questions: list[str] = []
    first_listed: dict[int, str] = {}  # question id → the record that listed it first
    for index, image in enumerate(images):
        vg_image_id = require(image, "id", int, path, index)
        image_where = f"{index} (id={vg_image_id})"
        if vg_image_id not in coco_of:
            raise DataError(f"image not in {IMAGES_FILE}", path=path, record=image_where, field="id")
        qas = require(image, "qas", list, path, image_where)
        coco_id = coco_of[vg_image_id]
        splits = [split for split, ids in split_images.items() if coco_id in ids]
        for position, qa in enumerate(qas):
            where = f"{image_where} qas[{position}]"
            question = require(qa, "question", str, path, where)
            all_questions.append(question)
            question_id = _unique_question_id(qa, path, where, first_listed)
            if not splits:
                continue
            label = ans2label.get(preprocess_answer(require(qa, "answer", str, path, where)))
            if label is None:
                continue
            for split in splits:
                kept[split].append(VGQuestion(question_id, coco_id, question, label))
    return VisualGenomeQA(kept, all_questions)


def _unique_question_id(qa: Mapping[str, object], path: Path, where: str, first_listed: dict[int, str]) -> int:
    """The ``qa_id`` (``id`` in older releases) of the question record at ``where``, refused when an earlier
    record has it (``first_listed``: question id → the record that listed it first; this one is added)."""
    key = "qa_id" if isinstance(qa, dict) and "qa_id" in qa else "id"
    question_id = require(qa, key, int, path, where)
    if question_id in first_listed:
        raise DataError(f"question listed twice, first as record {first_listed[question_id]}", path=path,
                        record=where, field=key)
    first_listed[question_id] = where
    return question_id
