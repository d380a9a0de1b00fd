"""Answer normalisation, soft scores and candidate selection, against hand-worked cases of the official
rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ban.data.answers import (
    CONTRACTIONS,
    PUNCTUATION,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    select_candidates,
    soft_score,
)

# vqaEval.py's 21 punctuation marks (its `punct` list), written out here as the independent reference
OFFICIAL_MARKS = ";/[]\"{}()=+\\_-><@`,?!"
# the endings after an apostrophe in English contractions ("n't" as "t", "'ll", "'d've"…; "y'all", "o'clock")
CONTRACTION_ENDINGS = {"t", "s", "d", "ll", "ve", "re", "m", "am", "all", "clock"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10,000", "10000"),  # digit-comma-digit: the comma goes, no space left behind
        ("1,000 (approx)", "1000 approx"),  # a digit-comma-digit anywhere deletes EVERY listed mark
        ("yes, it is", "yes it is"),  # comma followed by a space: deleted
        ("red,white", "red white"),  # comma touching no space: replaced by a space
        ("t-shirt", "t shirt"),
        ("t - shirt", "t  shirt"),  # "- " occurs: deleted, both spaces stay
        ("hi - there-you", "hi  thereyou"),  # the decision is per mark, for all its occurrences
        ("red-white, blue", "red white blue"),  # '-' replaced, ',' deleted
        ("yes!", "yes "),
        ('"hello"', " hello "),
        ("a/b", "a b"),
        ("a / b", "a  b"),
        ("a\\b", "a b"),
        ("@home", " home"),
        ("[x]{y}(z)", " x  y  z "),
        ("a=b+c_d>e<f`g;h", "a b c d e f g h"),
        ("2.5", "2.5"),  # period before a digit stays
        (".5", ".5"),
        ("x.5", "x.5"),  # only the digit AFTER matters (the official lookbehind is not one)
        ("3.", "3"),
        ("mr. smith", "mr smith"),
        ("a.b", "ab"),
        ("don't", "don't"),  # apostrophe is not in the list
        ("12:30", "12:30"),  # nor the colon
        ("50% & $5 #1 *", "50% & $5 #1 *"),
        ("", ""),
    ],
)
def test_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


def test_process_punctuation_deletes_at_most_32_periods() -> None:
    # the official call passes re.UNICODE (32) where `count` goes
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("a." * 32 + "b.") == "a" * 32 + "b."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("zero", "0"),
        ("one two three four five six seven eight nine ten", "1 2 3 4 5 6 7 8 9 10"),
        ("eleven", "eleven"),
        ("the dog", "dog"),
        ("a", ""),
        ("an apple", "apple"),
        ("The", ""),
        ("the a an", ""),
        ("another", "another"),
        ("dont", "don't"),
        ("Dont", "don't"),
        ("theres a cat", "there's cat"),
        ("twas", "'twas"),
        ("yall'll", "y'all'll"),
        ("somebody'd", "somebodyd"),  # the official map's reversed entry
        ("Im", "im"),  # capitalised keys are unreachable after lower-casing
        ("Ive", "ive"),
        ("ones", "ones"),
        ("  many   spaces\there ", "many spaces here"),
    ],
)
def test_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\tYes\n", "yes"),
        ("10,000", "10000"),
        ("None", "0"),
        ("It's a Dog.", "it's dog"),
        ("Dont know!", "don't know"),
        ("a man's hat", "man's hat"),
        ("the 3.5 inch", "3.5 inch"),
        ("2 , 3", "2 3"),
        ("1,2,3", "123"),
        ("t-shirt", "t shirt"),
        ("T - Shirt", "t shirt"),
        ("Two Dogs.", "2 dogs"),
        ("whats up?", "what's up"),
        ("", ""),
        ("the", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x-y\t-z", "xy z"),  # the tab is a space by stage 1: " -" occurs, so every "-" is deleted
        ("x-y\n-z", "xy z"),
        ("p/q\t/r", "pq r"),
        ("x-y-\tz", "xy z"),  # "- " after the tab
    ],
)
def test_tabs_and_newlines_are_spaces_before_the_punctuation_rules(text: str, expected: str) -> None:
    """vqaEval.py turns '\\n' and '\\t' into spaces and strips BEFORE processPunctuation, so a tab next to a mark
    makes the mark one "next to a space" (deleted, joining its neighbours) rather than replaced by a space."""
    official = official_punctuation_transcript(text.replace("\n", " ").replace("\t", " ").strip())
    assert " ".join(official.lower().split()) == expected  # stage 2: no number word, article or contraction here
    assert normalize_answer(text) == expected


def test_every_contraction_restores_only_apostrophes() -> None:
    """The official map's 120 entries each put back the apostrophes of a contraction written without (some of)
    them — so no entry may change a letter — except its three quirks, kept for the same scores."""
    quirks = {"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"}
    assert len(CONTRACTIONS) == 120
    for written, restored in CONTRACTIONS.items():
        if written in quirks:
            assert restored == quirks[written]
        else:
            assert "'" in restored and written != restored, written
            assert written.replace("'", "") == restored.replace("'", ""), written
            # and each apostrophe where English puts it: before a contraction's ending ("do'nt" would fail)
            if restored not in ("'ow's'at", "'twas"):
                assert set(restored.split("'")[1:]) <= CONTRACTION_ENDINGS, written
    assert CONTRACTIONS["aint"] == "ain't" and CONTRACTIONS["y'all'dve"] == "y'all'd've"


def test_the_punctuation_marks_are_vqa_evals() -> None:
    assert len(PUNCTUATION) == len(set(PUNCTUATION)) and set(PUNCTUATION) == set(OFFICIAL_MARKS)


@given(st.text(alphabet=st.sampled_from(list("aAbT1 ,.-!?'\"/()\t\n")), max_size=30))
def test_normalized_answer_invariants(text: str) -> None:
    out = normalize_answer(text)
    assert out == out.strip()
    assert "  " not in out
    assert out == out.lower()
    assert not any(mark in out for mark in PUNCTUATION)
    assert not set(out.split()) & {"a", "an", "the"}


@pytest.mark.parametrize(
    ("count", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (5, 1.0), (10, 1.0)]
)
def test_soft_score(count: int, expected: float) -> None:
    assert soft_score(count) == expected


def test_soft_score_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="an answer count cannot be negative, got -1"):
        soft_score(-1)


def test_select_candidates_counts_normalised_answers_and_orders_them() -> None:
    answers = ["Yes", "yes", "yes.", "no", "No", "two", "2", "2", "cat", "dog", "Dog", "the dog"]
    # yes: 3, 2: 3, dog: 3, no: 2, cat: 1
    assert select_candidates(answers, min_count=2) == ["2", "dog", "yes", "no"]
    assert select_candidates(answers, min_count=3) == ["2", "dog", "yes"]
    assert select_candidates(answers, min_count=1) == ["2", "dog", "yes", "no", "cat"]
    assert select_candidates(answers, min_count=4) == []


def test_select_candidates_normalise_as_the_reference_pipeline() -> None:
    # no whitespace clean-up before stage 1, as the reference: " -x-y" has " -", so every "-" is deleted
    assert select_candidates([" -x-y", "xy"], min_count=2) == ["xy"]
    assert normalize_answer(" -x-y") == "x y"


def test_select_candidates_is_independent_of_input_order() -> None:
    answers = ["b", "x", "c", "x", "b", "c", "d"]
    assert select_candidates(answers, 2) == ["b", "c", "x"]
    assert select_candidates(list(reversed(answers)), 2) == ["b", "c", "x"]


def test_select_candidates_accepts_a_generator_and_rejects_bad_threshold() -> None:
    assert select_candidates((a for a in ["x", "x"]), 2) == ["x"]
    assert select_candidates([], 1) == []
    with pytest.raises(ValueError, match="min_count must be at least 1, got 0"):
        select_candidates(["x"], 0)


def official_punctuation_transcript(text: str) -> str:
    """The official stage 1 written out literally (all marks, the original look-ahead pattern, count 32), as an
    independent check of the optimised implementation."""
    out = text
    for mark in OFFICIAL_MARKS:
        if (mark + " " in text or " " + mark in text) or re.search(r"(\d)(\,)(\d)", text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, count=32)


@given(st.text(alphabet=st.sampled_from(list("a1 ,.;/[]\"{}()=+\\_-><@`?!'")), max_size=40))
def test_process_punctuation_equals_literal_transcript(text: str) -> None:
    assert process_punctuation(text) == official_punctuation_transcript(text)
