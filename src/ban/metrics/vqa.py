"""The official VQA accuracy, number for number as the evaluation code of the VQA API (``vqaEval.py``).

Per question, with the 10 annotator answers a_1..a_10 and the predicted answer r:

- r: tabs/newlines → spaces, stripped, then both normalisation stages (:func:`ban.data.answers.normalize_answer`);
- the annotator answers are compared as stored when all of them are identical strings; otherwise each gets
  stage 1 only (:func:`ban.data.answers.process_punctuation`) — never stage 2. (The official annotation files
  already hold normalised answers, so this rarely matters, but it is what the official numbers are.)
- acc = mean over i of min(1, #{j : a_j ≠ a_i, a_j = r} / 3), where "a_j ≠ a_i" compares the whole answer
  records (answer, confidence, id) as the official code does. With the official files every record has its own
  ``answer_id``, so this leaves out exactly annotator i.

Overall, per answer type and per question type: ``round(100 * sum(acc) / count, 2)``, summing in the order of the
annotations (Python's ``round``, like the official code).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tqdm import tqdm

from ban.data.answers import normalize_answer, process_punctuation
from ban.data.jsonfile import read_json, require
from ban.data.vqa_json import PathLike, Record, check_annotated_questions, load_annotations, load_questions
from ban.errors import DataError

# Decimals of the reported percentages (the official default ``n=2``).
DECIMALS = 2


def question_accuracy(predicted: str, answers: Sequence[Record]) -> float:
    """Official accuracy in [0, 1] of one predicted answer against the annotator answer records.

    ``answers`` are the records of one question (``{"answer": str, "answer_confidence": …, "answer_id": …}``).

    >>> answers = [{"answer": "2", "answer_id": i} for i in range(1, 4)] + [
    ...     {"answer": "3", "answer_id": i} for i in range(4, 11)]
    >>> round(question_accuracy("two", answers), 6)  # 3 annotators said "2": (3 * 2/3 + 7 * 1) / 10
    0.9
    """
    result = normalize_answer(predicted)
    compared = compared_answers([record["answer"] for record in answers])
    answers = [{**record, "answer": answer} for record, answer in zip(answers, compared, strict=True)]
    matching = [record for record in answers if record["answer"] == result]
    per_annotator = [
        min(1, float(sum(1 for other in matching if other != left_out)) / 3) for left_out in answers
    ]
    return float(sum(per_annotator)) / len(per_annotator)


def compared_answers(answers: Sequence[str]) -> list[str]:
    """The annotators' answers of one question as the official metric compares them with a prediction: with their
    punctuation processed when they disagree, as given when they all agree."""
    return [process_punctuation(answer) for answer in answers] if len(set(answers)) > 1 else list(answers)


def vqa_accuracy(
    annotations: Sequence[Record], predictions: Mapping[int, str], *, progress: bool = False,
    path: PathLike | None = None,
) -> dict[str, Any]:
    """Official VQA accuracy of ``predictions`` (question id → answer) on ``annotations`` (official records, read
    from ``path`` if given: the errors name it).

    Every annotated question must have a prediction and every prediction an annotated question (the official
    code asserts the same); otherwise :class:`DataError`. Returns percentages rounded to 2 decimals::

        {"overall": 65.32, "perAnswerType": {"yes/no": …, "number": …, "other": …},
         "perQuestionType": {"what color": …, …}}

    Answer and question types appear in order of first appearance, and only those present.
    """
    if not annotations:
        raise DataError("no annotated questions to score", path=path)
    _check_coverage((record["question_id"] for record in annotations), predictions, path=path)
    overall: list[float] = []
    per_answer_type: dict[str, list[float]] = {}
    per_question_type: dict[str, list[float]] = {}
    for record in tqdm(annotations, desc="scoring", unit="q", disable=not progress):
        accuracy = question_accuracy(predictions[record["question_id"]], record["answers"])
        overall.append(accuracy)
        per_answer_type.setdefault(record["answer_type"], []).append(accuracy)
        per_question_type.setdefault(record["question_type"], []).append(accuracy)
    return {
        "overall": _percent(overall),
        "perAnswerType": {name: _percent(values) for name, values in per_answer_type.items()},
        "perQuestionType": {name: _percent(values) for name, values in per_question_type.items()},
    }


def score_files(
    questions_path: PathLike, annotations_path: PathLike, results_path: PathLike, *, progress: bool = False
) -> dict[str, Any]:
    """Official VQA accuracy of a results file (see :func:`vqa_accuracy`), with every file validated."""
    annotations = load_annotations(annotations_path)
    if not annotations:
        raise DataError("no annotated questions to score", path=annotations_path, field="annotations")
    check_annotated_questions(annotations, annotations_path, load_questions(questions_path), questions_path)
    predictions = load_results(results_path, [record["question_id"] for record in annotations])
    return vqa_accuracy(annotations, predictions, progress=progress)


def load_results(path: PathLike, question_ids: Iterable[int]) -> dict[int, str]:
    """Question id → answer from a results file (the evaluation server's format: a JSON list of
    ``{"question_id": int, "answer": str}``), checked to answer each of ``question_ids`` exactly once."""
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError("expected a JSON list of {\"question_id\": int, \"answer\": str} records", path=path)
    return results_to_predictions(records, question_ids, path=path)


def results_to_predictions(
    records: Sequence[Any], question_ids: Iterable[int], *, path: PathLike | None = None
) -> dict[int, str]:
    """Validate in-memory result records (as :func:`load_results`) and return question id → answer."""
    predictions: dict[int, str] = {}
    first_record: dict[int, int] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError("expected an object", path=path, record=index)
        question_id = require(record, "question_id", int, path, index)
        where = f"{index} (question_id={question_id})"
        require(record, "answer", str, path, where)
        if question_id in first_record:
            raise DataError(
                f"question answered twice (first in record {first_record[question_id]})",
                path=path, record=where, field="question_id",
            )
        first_record[question_id] = index
        predictions[question_id] = record["answer"]
    _check_coverage(question_ids, predictions, path=path, first_record=first_record)
    return predictions


def _check_coverage(
    question_ids: Iterable[int],
    predictions: Mapping[int, str],
    *,
    path: PathLike | None,
    first_record: Mapping[int, int] | None = None,
) -> None:
    """Raise unless ``predictions`` has exactly the keys ``question_ids``."""
    expected = set(question_ids)
    unknown = [question_id for question_id in predictions if question_id not in expected]
    if unknown:
        record = unknown[0] if first_record is None else f"{first_record[unknown[0]]} (question_id={unknown[0]})"
        raise DataError(
            f"question is not in the annotations ({len(unknown)} such answers in all)",
            path=path, record=record, field="question_id",
        )
    missing = sorted(expected.difference(predictions))
    if missing:
        shown = ", ".join(str(question_id) for question_id in missing[:5])
        more = ", …" if len(missing) > 5 else ""
        raise DataError(
            f"{len(missing)} annotated questions have no answer (question_id {shown}{more})",
            path=path, field="question_id",
        )


def _percent(values: Sequence[float]) -> float:
    return round(100 * float(sum(values)) / len(values), DECIMALS)
