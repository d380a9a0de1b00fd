"""What the scenes, boxes, features and questions mean, checked against naive re-computations."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

from ban.data.boxes import bottom_up_box_counts, box_iou
from ban.data.synthetic.detections import BACKGROUND, BOTTOM_UP_COUNTS, DUPLICATE, OBJECT, PARTIAL, sample_detections
from ban.data.synthetic.features import projection_matrix, region_features
from ban.data.synthetic.questions import sample_questions
from ban.data.synthetic.scenes import COLORS, MATERIALS, SHAPE_PLURALS, SHAPES, SIZES, sample_scene

WORD_VALUE = {}  # word -> (column, value); columns (size, color, material, shape) as in Scene.attributes
for column, values in enumerate((SIZES, COLORS, MATERIALS, SHAPES)):
    for value, word in enumerate(values):
        WORD_VALUE[word] = (column, value)
for value, word in enumerate(SHAPE_PLURALS):
    WORD_VALUE[word] = (3, value)
ATTRIBUTE_COLUMN = {"size": 0, "color": 1, "material": 2, "shape": 3, "big": 0}
VALUES = (SIZES, COLORS, MATERIALS, SHAPES)


def scenes(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng, sample_scene(rng)


def matching(attributes: np.ndarray, phrase: str) -> np.ndarray:
    """Objects a noun phrase like 'large red cube' or 'small objects' refers to."""
    mask = np.ones(len(attributes), dtype=bool)
    for word in phrase.split():
        if word in ("object", "objects"):
            continue
        column, value = WORD_VALUE[word]
        mask &= attributes[:, column] == value
    return mask


def the(attributes: np.ndarray, phrase: str) -> int:
    found = np.flatnonzero(matching(attributes, phrase))
    assert len(found) == 1, f"'the {phrase}' is not unique"
    return int(found[0])


def naive_answer(scene, text: str) -> str:
    a, x = scene.attributes, scene.centers[:, 0]
    if m := re.fullmatch(r"how many (.+) are (?:there|in the picture)\?", text):
        return str(int(matching(a, m[1]).sum()))
    if m := re.fullmatch(r"(?:is there an? |are there any )(.+)\?", text):
        return "yes" if matching(a, m[1]).any() else "no"
    if m := re.fullmatch(r"(?:are|do) the (.+) and the (.+?) (?:the same|have the same) (\w+)\?", text):
        column = ATTRIBUTE_COLUMN[m[3]]
        return "yes" if a[the(a, m[1]), column] == a[the(a, m[2]), column] else "no"
    if m := re.fullmatch(r"what (?:(\w+) is|is) the (.+) (left|right) of the (.+?)(?: made of)?\?", text):
        anchor = the(a, m[4])
        side = x < x[anchor] if m[3] == "left" else x > x[anchor]
        found = np.flatnonzero(matching(a, m[2]) & side)
        assert len(found) == 1, text
        column = ATTRIBUTE_COLUMN[m[1]] if m[1] else 2
        return VALUES[column][a[found[0], column]]
    if m := re.fullmatch(r"what (\w+) is the (.+)\?|what is the (\w+) of the (.+)\?|how (big) is the (.+)\?", text):
        attribute = m[1] or m[3] or m[5]
        phrase = m[2] or m[4] or m[6]
        if attribute == "material":
            phrase = phrase.removesuffix(" made of")
        column = ATTRIBUTE_COLUMN[attribute]
        return VALUES[column][a[the(a, phrase), column]]
    if m := re.fullmatch(r"what is the (.+) made of\?", text):
        return MATERIALS[a[the(a, m[1]), 2]]
    raise AssertionError(f"unparsed question: {text}")


def test_scenes_have_distinct_objects_in_the_image() -> None:
    for _, scene in scenes(200):
        assert 3 <= scene.num_objects <= 12
        assert len({tuple(row) for row in scene.attributes}) == scene.num_objects
        assert (scene.boxes[:, :2] >= 0).all() and (scene.boxes[:, 2] < scene.width).all()
        assert (scene.boxes[:, 3] < scene.height).all()


def test_every_answer_matches_a_naive_reading_of_the_question() -> None:
    families = set()
    for rng, scene in scenes(400):
        for question in sample_questions(rng, scene, 6):
            families.add(question.template.family)
            assert naive_answer(scene, question.text) == question.answer, question.text
    assert families == {"exist", "count", "query_color", "query_shape", "query_size", "query_material",
                        "relate", "compare"}  # fmt: skip


def test_answers_are_balanced() -> None:
    answers: dict[str, list[str]] = {"exist": [], "compare": [], "count": []}
    for rng, scene in scenes(600, seed=1):
        for question in sample_questions(rng, scene, 5):
            if question.template.family in answers:
                answers[question.template.family].append(question.answer)
    for family in ("exist", "compare"):
        assert 0.42 < answers[family].count("yes") / len(answers[family]) < 0.58, family
    counts = np.bincount([int(a) for a in answers["count"]])
    assert counts.max() / counts.sum() < 0.25 and len(counts) >= 8


def test_detections_cover_objects_with_duplicates_parts_and_background() -> None:
    totals = np.zeros(4, dtype=int)
    for rng, scene in scenes(200, seed=2):
        found = sample_detections(rng, scene)
        assert 10 <= len(found.boxes) <= 36
        assert found.boxes.dtype == np.float32
        totals += np.bincount(found.kind, minlength=4)
        own = box_iou(found.boxes.astype(np.float64), scene.boxes)
        for i, (kind, source) in enumerate(zip(found.kind, found.source, strict=True)):
            if kind == OBJECT:
                assert own[i, source] > 0.7
            elif kind == DUPLICATE:
                assert own[i, source] > 0.25
            elif kind == PARTIAL:
                assert 0.25 < own[i, source] < 0.75
            else:
                assert source == -1
        assert sorted(found.source[found.kind == OBJECT]) == list(range(scene.num_objects))
    assert (totals > 0).all() and totals[DUPLICATE] > totals[OBJECT] * 0.5 and totals[BACKGROUND] > 0


def test_bottom_up_counts_draw_the_bench_law_and_keep_every_object() -> None:
    """Each image's count is the law's draw from the detections' own stream (the scene's object count where that
    is larger), 10–100 boxes, mean ≈ 31 like `ban bench --boxes adaptive`, every object keeping its box."""
    counts = []
    for rng, scene in scenes(600, seed=7):
        expected = max(scene.num_objects, int(bottom_up_box_counts(copy.deepcopy(rng).random())))
        found = sample_detections(rng, scene, BOTTOM_UP_COUNTS)
        assert len(found.boxes) == len(found.kind) == len(found.source) == expected
        assert sorted(found.source[found.kind == OBJECT]) == list(range(scene.num_objects))
        counts.append(expected)
    assert min(counts) >= 10 and max(counts) <= 100 and max(counts) > 80
    assert 29 < np.mean(counts) < 34
    with pytest.raises(ValueError, match="counts must be one of"):
        sample_detections(np.random.default_rng(0), next(scenes(1))[1], "36")


def test_features_carry_attributes_and_position_but_no_single_dimension_does() -> None:
    projection = projection_matrix(64)
    rows, colors, columns = [], [], []
    for rng, scene in scenes(200, seed=4):
        found = sample_detections(rng, scene)
        features = region_features(rng, scene, found, projection)
        keep = found.kind == OBJECT
        rows.append(features[keep])
        colors.append(scene.attributes[found.source[keep], 1])
        centre = (found.boxes[keep, 0] + found.boxes[keep, 2]) / 2 / scene.width
        columns.append(np.minimum((centre * 3).astype(int), 2))
    x = np.concatenate(rows).astype(np.float64)
    x = np.hstack([x, np.ones((len(x), 1))])
    half = len(x) // 2
    for labels, classes, floor in ((np.concatenate(colors), 8, 0.9), (np.concatenate(columns), 3, 0.8)):
        target = np.eye(classes)[labels]
        weights = np.linalg.lstsq(x[:half], target[:half], rcond=None)[0]
        accuracy = (np.argmax(x[half:] @ weights, axis=1) == labels[half:]).mean()
        assert accuracy > floor  # a linear read-out of all dimensions recovers it
    # No single dimension tells the colour: the best one-dimension classifier (nearest class mean) is weak.
    labels = np.concatenate(colors)
    means = np.stack([x[:half, :-1][labels[:half] == c].mean(axis=0) for c in range(8)])  # [8, D]
    guess = np.argmin(np.abs(x[half:, None, :-1] - means[None]), axis=1)  # [M, D]
    best_single = (guess == labels[half:, None]).mean(axis=0).max()
    assert best_single < 0.4


@pytest.mark.parametrize("feature_dim", [1, 7, 2048])
def test_features_are_never_all_zero(feature_dim: int) -> None:
    projection = projection_matrix(feature_dim)
    for rng, scene in scenes(30, seed=feature_dim):
        features = region_features(rng, scene, sample_detections(rng, scene), projection)
        assert features.shape[1] == feature_dim and features.any(axis=1).all()
