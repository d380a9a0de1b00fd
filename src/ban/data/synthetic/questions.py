"""Questions about a scene from templates: existence, counting, attribute look-up, relations, comparison.

Answers are balanced by construction so that the question text alone says little: for yes/no questions the
answer is drawn first and a question with that answer is then searched for; for counting the count is drawn
first; attribute answers are uniform because attributes are. Every question has at most 14 tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ban.data.dictionary import QUESTION_LENGTH
from ban.data.synthetic.scenes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    COLOR,
    MATERIAL,
    NUM_VALUES,
    SHAPE,
    SHAPE_PLURALS,
    SIZE,
    Scene,
)
from ban.data.tokenizer import tokenize

YES_NO, NUMBER, OTHER = "yes/no", "number", "other"


@dataclass(frozen=True)
class Template:
    """A question pattern. Placeholders: {np}/{np2} singular noun phrases, {nps} plural, {side} a relation."""

    family: str
    pattern: str
    question_type: str
    answer_type: str


@dataclass(frozen=True)
class Question:
    """A generated question with its canonical answer (lower case; numbers as digits)."""

    text: str
    answer: str
    template: Template


EXIST = (
    Template("exist", "is there a {np}?", "is there a", YES_NO),
    Template("exist", "are there any {nps}?", "are there any", YES_NO),
)
COUNT = (
    Template("count", "how many {nps} are there?", "how many", NUMBER),
    Template("count", "how many {nps} are in the picture?", "how many", NUMBER),
)
QUERY = {
    COLOR: (
        Template("query_color", "what color is the {np}?", "what color is the", OTHER),
        Template("query_color", "what is the color of the {np}?", "what is the", OTHER),
    ),
    SHAPE: (
        Template("query_shape", "what shape is the {np}?", "what shape is the", OTHER),
        Template("query_shape", "what is the shape of the {np}?", "what is the", OTHER),
    ),
    SIZE: (
        Template("query_size", "what size is the {np}?", "what size is the", OTHER),
        Template("query_size", "how big is the {np}?", "how", OTHER),
    ),
    MATERIAL: (
        Template("query_material", "what material is the {np} made of?", "what", OTHER),
        Template("query_material", "what is the {np} made of?", "what is the", OTHER),
    ),
}
RELATE = {
    COLOR: (Template("relate", "what color is the {np} {side} the {np2}?", "what color is the", OTHER),),
    SHAPE: (Template("relate", "what shape is the {np} {side} the {np2}?", "what shape is the", OTHER),),
    SIZE: (Template("relate", "what size is the {np} {side} the {np2}?", "what size is the", OTHER),),
    MATERIAL: (Template("relate", "what is the {np} {side} the {np2} made of?", "what is the", OTHER),),
}
COMPARE = (
    Template("compare", "are the {np} and the {np2} the same {attribute}?", "are the", YES_NO),
    Template("compare", "do the {np} and the {np2} have the same {attribute}?", "do", YES_NO),
)
SIDES = ("left of", "right of")

# Attribute columns a counting / existence filter may use (sorted, as words are written).
COUNT_FILTERS: tuple[tuple[int, ...], ...] = (
    (), (COLOR,), (SHAPE,), (SIZE,), (MATERIAL,), (COLOR, SHAPE), (SIZE, SHAPE), (MATERIAL, SHAPE),
    (SIZE, COLOR), (COLOR, MATERIAL), (SIZE, COLOR, SHAPE), (COLOR, MATERIAL, SHAPE),
)  # fmt: skip
# Existence filters have at least 8 value combinations, so "no" is always reachable.
EXIST_FILTERS = tuple(f for f in COUNT_FILTERS if int(np.prod([NUM_VALUES[c] for c in f])) >= 8)
COUNT_TARGETS = np.arange(11)
COUNT_WEIGHTS = np.array([0.12, 0.16, 0.16, 0.15, 0.13, 0.11, 0.08, 0.05, 0.02, 0.01, 0.01])
FAMILY_WEIGHTS = np.array([0.15, 0.26, 0.33, 0.14, 0.12])
# Attribute asked by query and relation questions (size, color, material, shape): mostly the many-valued ones.
ASKED_WEIGHTS = np.array([0.15, 0.35, 0.15, 0.35])
RELATION_MARGIN = 0.1  # fraction of the image width: objects closer than this in x are neither left nor right


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(columns: tuple[int, ...], values: tuple[int, ...], plural: bool = False) -> str:
    """Words for a filter, e.g. columns (SIZE, SHAPE), values (1, 0) → 'large cube' ('large cubes')."""
    words = [ATTRIBUTE_VALUES[c][v] for c, v in zip(columns, values, strict=True) if c != SHAPE]
    if SHAPE in columns:
        shape = values[columns.index(SHAPE)]
        words.append(SHAPE_PLURALS[shape] if plural else ATTRIBUTE_VALUES[SHAPE][shape])
    else:
        words.append("objects" if plural else "object")
    return " ".join(words)


def combination_counts(attributes: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
    """How many of the `[n, 4]` objects have each value combination of `columns` → `[Π values]` int64."""
    keys = np.zeros(len(attributes), dtype=np.int64)
    for column in columns:
        keys = keys * NUM_VALUES[column] + attributes[:, column]
    return np.bincount(keys, minlength=int(np.prod([NUM_VALUES[c] for c in columns])))


def decode_combination(code: int, columns: tuple[int, ...]) -> tuple[int, ...]:
    """Inverse of the mixed-radix key of `combination_counts`."""
    values = []
    for column in reversed(columns):
        values.append(code % NUM_VALUES[column])
        code //= NUM_VALUES[column]
    return tuple(reversed(values))


def matches(attributes: np.ndarray, columns: tuple[int, ...], values: tuple[int, ...]) -> np.ndarray:
    """`[n]` bool: which of the `[n, 4]` objects have `values` in `columns`."""
    mask = np.ones(len(attributes), dtype=bool)
    for column, value in zip(columns, values, strict=True):
        mask &= attributes[:, column] == value
    return mask


SUBSETS: tuple[tuple[int, ...], ...] = tuple(
    columns for size in range(len(ATTRIBUTE_NAMES) + 1) for columns in itertools.combinations(range(4), size)
)  # every set of attribute columns, shortest first


class MatchTable:
    """For every attribute subset and object, the set of objects that look the same on that subset.

    Sets are Python ints used as bit masks over the (at most 12) objects, so uniqueness tests are cheap.
    """

    def __init__(self, attributes: np.ndarray) -> None:
        same = attributes[:, None, :] == attributes[None, :, :]  # [n, n, 4]
        powers = 1 << np.arange(len(attributes), dtype=np.int64)
        self.bits = [[int(b) for b in np.all(same[:, :, list(s)], axis=2) @ powers] for s in SUBSETS]


def bitmask(mask: np.ndarray) -> int:
    """`[n]` bool → int with bit i set where mask[i]."""
    return int((mask.astype(np.int64) << np.arange(len(mask), dtype=np.int64)).sum())


def describe(
    rng: np.random.Generator,
    table: MatchTable,
    target: int,
    allowed: tuple[int, ...],
    pool: int,
    forbidden: int = 0,
) -> tuple[int, ...] | None:
    """Columns of a description of object `target` that matches it alone among the `pool` objects.

    `pool` and `forbidden` are bit masks of objects (`pool` contains `target`); the description must match
    no `forbidden` object. Chooses uniformly among the unique descriptions with at most one attribute more
    than the shortest; None if there is none.
    """
    unique = [
        columns
        for columns, bits in zip(SUBSETS, table.bits, strict=True)
        if set(columns) <= set(allowed) and (bits[target] & pool).bit_count() == 1 and not bits[target] & forbidden
    ]
    if not unique:
        return None
    shortest = len(unique[0])
    choices = [columns for columns in unique if len(columns) <= shortest + 1]
    return choices[int(rng.integers(len(choices)))]


def _phrase(attributes: np.ndarray, target: int, columns: tuple[int, ...]) -> str:
    return noun_phrase(columns, tuple(int(v) for v in attributes[target, list(columns)]))


def _pick(rng: np.random.Generator, templates: tuple[Template, ...]) -> Template:
    return templates[int(rng.integers(len(templates)))]


def _filter_question(
    rng: np.random.Generator, scene: Scene, filters: tuple[tuple[int, ...], ...], wanted: np.ndarray
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A random filter (columns, values) whose object count is in `wanted` (bool `[max count + 1]`)."""
    for index in rng.permutation(len(filters)):
        columns = filters[index]
        counts = combination_counts(scene.attributes, columns)
        good = np.flatnonzero(wanted[np.minimum(counts, len(wanted) - 1)])
        if len(good):
            return columns, decode_combination(int(good[int(rng.integers(len(good)))]), columns)
    return None


def _exist(rng: np.random.Generator, scene: Scene, table: MatchTable) -> Question | None:
    """Questions like "is there a red cube?": the answer is drawn first, then a filter with that answer."""
    answer = "yes" if rng.random() < 0.5 else "no"
    wanted = np.array([answer == "no", answer == "yes"])
    found = _filter_question(rng, scene, EXIST_FILTERS, wanted)
    if found is None:
        return None
    template = _pick(rng, EXIST)
    text = template.pattern.format(np=noun_phrase(*found), nps=noun_phrase(*found, plural=True))
    return Question(_fix_article(text), answer, template)


def _fix_article(text: str) -> str:
    """Turn 'is there a <vowel-word>' into 'is there an …'."""
    prefix = "is there a "
    if text.startswith(prefix):
        return "is there " + _article(text[len(prefix) :])
    return text


def _count(rng: np.random.Generator, scene: Scene, table: MatchTable) -> Question | None:
    """Questions like "how many red objects are there?": the count is drawn first, then a filter with that count."""
    target = int(rng.choice(COUNT_TARGETS, p=COUNT_WEIGHTS))
    found = _filter_question(rng, scene, COUNT_FILTERS, np.arange(scene.num_objects + 2) == target)
    if found is None:
        return None
    template = _pick(rng, COUNT)
    return Question(template.pattern.format(nps=noun_phrase(*found, plural=True)), str(target), template)


def _query(rng: np.random.Generator, scene: Scene, table: MatchTable) -> Question | None:
    """Questions like "what color is the large cube?": one attribute of an object named by the others."""
    asked = int(rng.choice(len(ATTRIBUTE_NAMES), p=ASKED_WEIGHTS))
    target = int(rng.integers(scene.num_objects))
    allowed = tuple(c for c in range(len(ATTRIBUTE_NAMES)) if c != asked)
    columns = describe(rng, table, target, allowed, (1 << scene.num_objects) - 1)
    if columns is None:
        return None
    template = _pick(rng, QUERY[asked])
    text = template.pattern.format(np=_phrase(scene.attributes, target, columns))
    return Question(text, ATTRIBUTE_VALUES[asked][scene.attributes[target, asked]], template)


def _relate(rng: np.random.Generator, scene: Scene, table: MatchTable) -> Question | None:
    """Questions like "what shape is the red object left of the blue sphere?": the only match on that side."""
    asked = int(rng.choice(len(ATTRIBUTE_NAMES), p=ASKED_WEIGHTS))
    side = int(rng.integers(len(SIDES)))
    anchor = int(rng.integers(scene.num_objects))
    everyone = (1 << scene.num_objects) - 1
    anchor_columns = describe(rng, table, anchor, tuple(range(len(ATTRIBUTE_NAMES))), everyone)
    if anchor_columns is None:
        return None
    offset = scene.centers[:, 0] - scene.centers[anchor, 0]
    margin = RELATION_MARGIN * scene.width
    on_side = offset < -margin if side == 0 else offset > margin
    between = (np.abs(offset) <= margin) & (np.arange(scene.num_objects) != anchor)
    allowed = tuple(c for c in range(len(ATTRIBUTE_NAMES)) if c != asked)
    for target in rng.permutation(np.flatnonzero(on_side)):
        columns = describe(rng, table, int(target), allowed, bitmask(on_side), bitmask(between))
        if columns is not None:
            template = _pick(rng, RELATE[asked])
            text = template.pattern.format(
                np=_phrase(scene.attributes, int(target), columns),
                side=SIDES[side],
                np2=_phrase(scene.attributes, anchor, anchor_columns),
            )
            return Question(text, ATTRIBUTE_VALUES[asked][scene.attributes[target, asked]], template)
    return None


def _compare(rng: np.random.Generator, scene: Scene, table: MatchTable) -> Question | None:
    """Questions like "are the cube and the sphere the same color?": the answer is drawn first."""
    asked = int(rng.integers(len(ATTRIBUTE_NAMES)))
    same = rng.random() < 0.5
    allowed = tuple(c for c in range(len(ATTRIBUTE_NAMES)) if c != asked)
    everyone = (1 << scene.num_objects) - 1
    described = {}
    for index in range(scene.num_objects):
        columns = describe(rng, table, index, allowed, everyone)
        if columns is not None:
            described[index] = columns
    values = scene.attributes[:, asked]
    pairs = [(i, j) for i, j in itertools.combinations(sorted(described), 2) if (values[i] == values[j]) == same]
    if not pairs:
        return None
    first, second = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:
        first, second = second, first
    template = _pick(rng, COMPARE)
    text = template.pattern.format(
        np=_phrase(scene.attributes, first, described[first]),
        np2=_phrase(scene.attributes, second, described[second]),
        attribute=ATTRIBUTE_NAMES[asked],
    )
    return Question(text, "yes" if same else "no", template)


# Each family takes (rng, scene, match table) and returns a question or None when the scene allows none.
FAMILIES = (_exist, _count, _query, _relate, _compare)


def sample_questions(rng: np.random.Generator, scene: Scene, count: int) -> list[Question]:
    """Up to `count` distinct questions about `scene` (fewer only if the scene allows no more)."""
    questions: list[Question] = []
    seen: set[str] = set()
    table = MatchTable(scene.attributes)
    for _ in range(8 * count):
        if len(questions) == count:
            break
        family = FAMILIES[int(rng.choice(len(FAMILIES), p=FAMILY_WEIGHTS))]
        question = family(rng, scene, table)
        if question is None or question.text in seen or len(tokenize(question.text)) > QUESTION_LENGTH:
            continue
        seen.add(question.text)
        questions.append(question)
    return questions
