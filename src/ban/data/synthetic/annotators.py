"""Ten annotator answers per question, with controlled disagreement and spelling variants.

Each question gets an error rate uniform in [0, 2·(1 − a)] for the mean accuracy a, scaled per answer type
(people agree most on yes/no, least on counts: × 0.5, × 1.25, × 1 for other). Each of the ten annotators
gives the true answer unless an error strikes, then a plausible wrong one (the other yes/no, a count off by
one or two, another value of the same attribute). Answers are written in a spelling variant now and then
("Red", "two", "the cube", "yes.") that the official VQA answer normalisation maps back to the canonical
answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ban.data.synthetic.questions import NUMBER, OTHER, YES_NO
from ban.data.synthetic.scenes import ATTRIBUTE_VALUES, SHAPES

NUM_ANNOTATORS = 10
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
VARIANT_PROBABILITY = 0.25
CONFIDENCE_NAMES = ("yes", "maybe", "no")
CONFIDENCE_IF_RIGHT = (0.85, 0.12, 0.03)  # P(yes, maybe, no)
CONFIDENCE_IF_WRONG = (0.40, 0.45, 0.15)
DIFFICULTY = {YES_NO: 0.5, NUMBER: 1.25, OTHER: 1.0}


@dataclass(frozen=True)
class AnnotatorAnswer:
    """One annotator's raw answer string, the canonical answer it stands for, and the stated confidence."""

    raw: str
    canonical: str
    confidence: str


def _wrong_answer(rng: np.random.Generator, answer: str, answer_type: str) -> str:
    if answer_type == YES_NO:
        return "no" if answer == "yes" else "yes"
    if answer_type == NUMBER:
        shift = int(rng.choice([-2, -1, 1, 2], p=[0.15, 0.35, 0.35, 0.15]))
        return str(abs(int(answer) + shift))
    values = next(values for values in ATTRIBUTE_VALUES if answer in values)
    others = [value for value in values if value != answer]
    return others[int(rng.integers(len(others)))]


def spelling_variants(answer: str) -> tuple[str, ...]:
    """Raw strings that the official VQA normalisation maps to the canonical `answer` (itself excluded)."""
    variants = [answer.capitalize(), answer + "."]
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        variants.append(NUMBER_WORDS[int(answer)])
        if answer == "0":
            variants.append("none")
    if answer in SHAPES:
        variants += ["the " + answer, "a " + answer]
    return tuple(variants)


def annotate(rng: np.random.Generator, answer: str, answer_type: str, mean_accuracy: float) -> list[AnnotatorAnswer]:
    """Ten answers to a question whose canonical answer is `answer`."""
    error = min(1.0, (1.0 - mean_accuracy) * 2.0 * rng.random() * DIFFICULTY[answer_type])
    right = rng.random(NUM_ANNOTATORS) >= error
    variant = rng.random(NUM_ANNOTATORS) < VARIANT_PROBABILITY
    confidence_draw = rng.random(NUM_ANNOTATORS)
    answers = []
    for i in range(NUM_ANNOTATORS):
        canonical = answer if right[i] else _wrong_answer(rng, answer, answer_type)
        raw = canonical
        if variant[i]:
            variants = spelling_variants(canonical)
            raw = variants[int(rng.integers(len(variants)))]
        thresholds = CONFIDENCE_IF_RIGHT if right[i] else CONFIDENCE_IF_WRONG
        level = int(np.searchsorted(np.cumsum(thresholds), confidence_draw[i], side="right"))
        answers.append(AnnotatorAnswer(raw, canonical, CONFIDENCE_NAMES[min(level, len(CONFIDENCE_NAMES) - 1)]))
    return answers


def majority_answer(answers: list[AnnotatorAnswer], truth: str) -> str:
    """The most frequent canonical answer; ties go to `truth`, then to the alphabetically first."""
    counts = Counter(a.canonical for a in answers)
    best = max(counts.values())
    if counts[truth] == best:
        return truth
    return min(answer for answer, count in counts.items() if count == best)
