"""Blind baselines on the generated validation split, scored with the official VQA accuracy.

- answer prior: always the most frequent training answer;
- question only: for each question the most frequent training answer of the same question text, falling
  back to that of the same pattern (the text with every attribute word blanked, e.g. "how many _ _ are
  there"), then to the answer prior.

Score of a prediction: the official accuracy (:func:`ban.metrics.vqa.question_accuracy`: each annotator left
out in turn, min(1, matching answers among the other nine / 3), averaged) against the annotators' answers as the
annotations file holds them — what `ban evaluate` and `ban score` give the same predictions; in percent, overall
and per answer type.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from ban.data.synthetic.scenes import ATTRIBUTE_VALUES, SHAPE_PLURALS
from ban.data.synthetic.worker import QaRecord
from ban.metrics.vqa import question_accuracy

ATTRIBUTE_WORDS = frozenset(word for values in ATTRIBUTE_VALUES for word in values) | set(SHAPE_PLURALS)


def question_pattern(text: str) -> str:
    """The question's words, lower case, without '?', with attribute words replaced by '_'."""
    return " ".join("_" if word in ATTRIBUTE_WORDS else word for word in text.lower().replace("?", "").split())


def accuracy(prediction: str, answers: tuple[str, ...]) -> float:
    """The official accuracy in [0, 1] of ``prediction`` against the annotators' raw ``answers``."""
    return question_accuracy(prediction, [{"answer": answer, "answer_id": i} for i, answer in enumerate(answers, 1)])


def _most_frequent(counter: Counter) -> str:
    best = max(counter.values())
    return min(answer for answer, count in counter.items() if count == best)  # ties: alphabetical


def _score(records: Iterable[QaRecord], predict: Callable[[QaRecord], str]) -> dict[str, object]:
    total: dict[str, list[float]] = defaultdict(list)
    for record in records:
        score = accuracy(predict(record), record.answers)
        total["overall"].append(score)
        total[record.answer_type].append(score)
    overall = total.pop("overall", [])
    return {
        "overall": round(100.0 * sum(overall) / max(1, len(overall)), 2),
        "perAnswerType": {k: round(100.0 * sum(v) / len(v), 2) for k, v in sorted(total.items())},
        "questions": len(overall),
    }


def blind_baselines(train: list[QaRecord], val: list[QaRecord]) -> dict[str, dict[str, object]]:
    """Scores of the answer prior and of the question-only predictor on `val`, learned from `train`."""
    if not train or not val:
        return {}
    prior = _most_frequent(Counter(r.majority for r in train))
    by_text: dict[str, Counter] = defaultdict(Counter)
    by_pattern: dict[str, Counter] = defaultdict(Counter)
    for record in train:
        by_text[record.text][record.majority] += 1
        by_pattern[question_pattern(record.text)][record.majority] += 1
    text_answer = {text: _most_frequent(c) for text, c in by_text.items()}
    pattern_answer = {pattern: _most_frequent(c) for pattern, c in by_pattern.items()}

    def question_only(record: QaRecord) -> str:
        return text_answer.get(record.text) or pattern_answer.get(question_pattern(record.text)) or prior

    return {
        "answer_prior": {"answer": prior, **_score(val, lambda record: prior)},
        "question_only": _score(val, question_only),
    }
