"""The official VQA 2.0 question and annotation files (``v2_OpenEnded_mscoco_*_questions.json``,
``v2_mscoco_*_annotations.json``), read and validated: what `ban prepare`, the metric and the pictures read."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ban.data.jsonfile import read_json, require, require_list
from ban.errors import DataError

PathLike = str | os.PathLike[str]
Record = Mapping[str, Any]


def check_annotated_questions(annotations: Sequence[Record], annotations_path: PathLike,
                              questions: Mapping[int, Record], questions_path: PathLike) -> None:
    """Raise :class:`DataError` naming the annotation record unless each annotated question is in ``questions``
    (question id → record of the questions file) and about the same image."""
    for index, record in enumerate(annotations):
        question = questions.get(record["question_id"])
        where = f"{index} (question_id={record['question_id']})"
        if question is None:
            raise DataError(f"question is not in the questions file {os.fspath(questions_path)}",
                            path=annotations_path, record=where, field="question_id")
        if question["image_id"] != record["image_id"]:
            raise DataError(f"image_id {record['image_id']} differs from the questions file's {question['image_id']}",
                            path=annotations_path, record=where, field="image_id")


def load_annotations(path: PathLike) -> list[dict[str, Any]]:
    """The ``annotations`` records of an official annotation file (``v2_mscoco_*_annotations.json``),
    validated: each needs an int ``question_id`` (unique) and ``image_id``, str ``question_type`` and
    ``answer_type``, and a non-empty list of ``answers`` records with a str ``answer``."""
    records = []
    for where, record in _question_records(path, "annotations", "question annotated twice"):
        require(record, "image_id", int, path, where)
        require(record, "question_type", str, path, where)
        require(record, "answer_type", str, path, where)
        answers = require(record, "answers", list, path, where)
        if not answers:
            raise DataError("no annotator answers", path=path, record=where, field="answers")
        for position, answer in enumerate(answers):
            if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
                raise DataError(
                    "expected an object with a string 'answer'", path=path, record=where,
                    field=f"answers[{position}]",
                )
        records.append(record)
    return records


def load_questions(path: PathLike) -> dict[int, dict[str, Any]]:
    """Question id → record of an official questions file (``v2_OpenEnded_mscoco_*_questions.json``)."""
    questions: dict[int, dict[str, Any]] = {}
    for where, record in _question_records(path, "questions", "question listed twice"):
        require(record, "image_id", int, path, where)
        require(record, "question", str, path, where)
        questions[record["question_id"]] = record
    return questions


def _question_records(path: PathLike, key: str, repeated: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The records listed under ``key`` of an official file, each an object with an int ``question_id`` no other
    record has (else ``repeated`` is the error), with where it is for messages: ``"<index> (question_id=<id>)"``."""
    data, other = read_json(path), {"questions": "annotations", "annotations": "questions"}[key]
    if isinstance(data, dict) and key not in data and isinstance(data.get(other), list):
        raise DataError(f"an official {other} file, not the {key} file (it lists {other!r}): were the two files "
                        "swapped?", path=path, field=key)
    seen: set[int] = set()
    for index, record in enumerate(require_list(data, key, path)):
        if not isinstance(record, dict):
            raise DataError("expected an object", path=path, record=index)
        question_id = require(record, "question_id", int, path, index)
        where = f"{index} (question_id={question_id})"
        if question_id in seen:
            raise DataError(repeated, path=path, record=where, field="question_id")
        seen.add(question_id)
        yield where, record
