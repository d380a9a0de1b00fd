"""Blind baselines on the generated validation split, scored with the simple VQA soft accuracy.

- answer prior: always the most frequent training answer;
- question only: for each question the most frequent training answer of the same question text, falling
  back to that of the same pattern (the text with every attribute word blanked, e.g. "how many _ _ are
  there"), then to the answer prior.

Score of a prediction: min(1, annotators who gave it / 3), on canonical (normalised) answers; in percent,
overall and per answer type.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from ban.data.synthetic.scenes import ATTRIBUTE_VALUES, SHAPE_PLURALS
from ban.data.synthetic.worker import QaRecord

ATTRIBUTE_WORDS = frozenset(word for values in ATTRIBUTE_VALUES for word in values) | set(SHAPE_PLURALS)


def question_pattern(text: str) -> str:
    """The question's words, lower case, without '?', with attribute words replaced by '_'."""
    return " ".join("_" if word in ATTRIBUTE_WORDS else word for word in text.lower().replace("?", "").split())


def soft_score(prediction: str, counts: tuple[tuple[str, int], ...]) -> float:
    """min(1, #annotators who gave `prediction` / 3)."""
    return min(1.0, dict(counts).get(prediction, 0) / 3.0)


def _most_frequent(counter: Counter) -> str:
    best = max(counter.values())
    return min(answer for answer, count in counter.items() if count == best)  # ties: alphabetical


def _score(records: Iterable[QaRecord], predict: Callable[[QaRecord], str]) -> dict[str, object]:
    total: dict[str, list[float]] = defaultdict(list)
    for record in records:
        score = soft_score(predict(record), record.counts)
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
