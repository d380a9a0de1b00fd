"""Property-based corruption of the VQA JSON readers: questions, annotations, results (`ban score`), Visual
Genome QA, dictionary.json. A corrupted file gives a DataError (never a raw KeyError/TypeError/RecursionError),
and whatever is accepted is valid by an independent check of the official schema (nothing silently wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ban.data.dictionary import Dictionary
from ban.data.visual_genome import load_visual_genome
from ban.data.vqa_json import load_annotations, load_questions
from ban.errors import BanError, DataError
from ban.metrics.vqa import score_files

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text("ab?ñ\ud800 ", max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abq_", max_size=4), inner, max_size=3),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a JSON tree, as the tuple of keys / indices leading to it."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, prefix + (index,))
    return found


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` after 1–3 random structural changes: delete, replace by any JSON value, duplicate."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(document)))
        if not path:
            document = draw(json_values)
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        operation = draw(st.sampled_from(["delete", "replace", "duplicate"]))
        if operation == "delete":
            del parent[path[-1]]
        elif operation == "replace":
            parent[path[-1]] = draw(json_values)
        elif isinstance(parent, list):
            parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
    return document


@st.composite
def garbled(draw: st.DrawFn, text: str) -> bytes:
    """The bytes of ``text`` cut, with bytes flipped, or with garbage inserted."""
    data = bytearray(text.encode("utf-8"))
    kind = draw(st.sampled_from(["cut", "flip", "insert"]))
    at = draw(st.integers(0, len(data)))
    if kind == "cut":
        return bytes(data[:at])
    if kind == "flip" and at < len(data):
        data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=8)) + bytes(data[at:])


def same(first: Any, second: Any) -> bool:
    """Equality of JSON data that treats NaN as equal to itself."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def valid_questions(data: Any) -> bool:
    """The official questions schema, checked independently of the reader."""
    records = data.get("questions") if isinstance(data, dict) else None
    return isinstance(records, list) and all(
        isinstance(r, dict) and is_int(r.get("question_id")) and is_int(r.get("image_id"))
        and isinstance(r.get("question"), str) for r in records
    ) and len({r["question_id"] for r in records}) == len(records)


def valid_annotations(data: Any) -> bool:
    records = data.get("annotations") if isinstance(data, dict) else None
    return isinstance(records, list) and all(
        isinstance(r, dict) and is_int(r.get("question_id")) and is_int(r.get("image_id"))
        and isinstance(r.get("question_type"), str) and isinstance(r.get("answer_type"), str)
        and isinstance(r.get("answers"), list) and len(r["answers"]) > 0
        and all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in r["answers"])
        for r in records
    ) and len({r["question_id"] for r in records}) == len(records)


def valid_results(results: Any, annotations: dict) -> bool:
    if not isinstance(results, list) or not all(
            isinstance(r, dict) and is_int(r.get("question_id")) and isinstance(r.get("answer"), str)
            for r in results):
        return False
    answered = [r["question_id"] for r in results]
    return sorted(answered) == sorted(a["question_id"] for a in annotations["annotations"])


QUESTIONS = {"info": {}, "questions": [
    {"question_id": 10, "image_id": 1, "question": "What color is the cube?"},
    {"question_id": 11, "image_id": 1, "question": "How many balls are there?"},
    {"question_id": 20, "image_id": 2, "question": "Is there a red ball?"},
]}
ANSWERS = {10: ["red"] * 6 + ["blue"] * 4, 11: ["2"] * 3 + ["two"] * 5 + ["3"] * 2, 20: ["yes"] * 10}
TYPES = {10: ("what color is the", "other"), 11: ("how many", "number"), 20: ("is there a", "yes/no")}
ANNOTATIONS = {"annotations": [
    {"question_id": q, "image_id": 1 if q < 20 else 2, "question_type": TYPES[q][0], "answer_type": TYPES[q][1],
     "multiple_choice_answer": answers[0],
     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
    for q, answers in ANSWERS.items()
]}
RESULTS = [{"question_id": 10, "answer": "red"}, {"question_id": 11, "answer": "2"},
           {"question_id": 20, "answer": "no"}]


def write(path: Path, data: Any) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode("utf-8"))
    return path


@FUZZ
@given(questions=mutated(QUESTIONS))
def test_questions_reader_accepts_exactly_the_valid_files(questions, tmp_path):
    path = write(tmp_path / "q.json", questions)
    try:
        loaded = load_questions(path)
    except DataError as error:
        assert "q.json" in str(error)
        assert not valid_questions(questions)
    else:
        assert valid_questions(questions)
        assert same(loaded, {r["question_id"]: r for r in questions["questions"]})


@FUZZ
@given(annotations=mutated(ANNOTATIONS))
def test_annotations_reader_accepts_exactly_the_valid_files(annotations, tmp_path):
    path = write(tmp_path / "a.json", annotations)
    try:
        loaded = load_annotations(path)
    except DataError as error:
        assert "a.json" in str(error)
        assert not valid_annotations(annotations)
    else:
        assert valid_annotations(annotations)
        assert same(loaded, annotations["annotations"])


@FUZZ
@given(which=st.sampled_from(["questions", "annotations", "results"]), data=st.data())
def test_score_refuses_any_inconsistent_input(which, data, tmp_path):
    files = {"questions": QUESTIONS, "annotations": ANNOTATIONS, "results": RESULTS}
    files[which] = data.draw(mutated(files[which]))
    paths_ = {name: write(tmp_path / f"{name}.json", value) for name, value in files.items()}
    try:
        scores = score_files(paths_["questions"], paths_["annotations"], paths_["results"])
    except DataError as error:
        assert any(f"{name}.json" in str(error) for name in files)  # names the file (or the other one it contradicts)
        return
    questions, annotations = files["questions"], files["annotations"]
    assert valid_questions(questions) and valid_annotations(annotations)
    by_id = {q["question_id"]: q for q in questions["questions"]}
    assert all(by_id[a["question_id"]]["image_id"] == a["image_id"] for a in annotations["annotations"])
    assert valid_results(files["results"], annotations)
    assert 0.0 <= scores["overall"] <= 100.0


@FUZZ
@given(which=st.sampled_from(["questions", "annotations", "results"]), data=st.data())
def test_garbled_bytes_give_data_errors(which, data, tmp_path):
    files = {"questions": QUESTIONS, "annotations": ANNOTATIONS, "results": RESULTS}
    garbage = data.draw(garbled(json.dumps(files[which], ensure_ascii=False)))
    paths_ = {name: write(tmp_path / f"{name}.json", garbage if name == which else value)
              for name, value in files.items()}
    try:
        scores = score_files(paths_["questions"], paths_["annotations"], paths_["results"])
    except DataError as error:
        assert any(f"{name}.json" in str(error) for name in files)  # names the file (or the one it contradicts)
        return
    accepted = json.loads(garbage.decode("utf-8"))  # accepted bytes must be JSON of the official schema
    files[which] = accepted
    assert valid_questions(files["questions"]) and valid_annotations(files["annotations"])
    assert valid_results(files["results"], files["annotations"])
    assert 0.0 <= scores["overall"] <= 100.0


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,            # nesting deeper than Python's recursion limit
    '{"questions": ' + "[" * 50_000 + "]" * 50_000 + "}",
    "\ufeff" + json.dumps(QUESTIONS),           # a byte-order mark
    '{"questions": [{"question_id": NaN, "image_id": 1, "question": "x"}]}',
    '{"questions": [{"question_id": 1e400, "image_id": 1, "question": "x"}]}',
    '{"questions": [{"question_id": ' + "9" * 5000 + ', "image_id": 1, "question": "x"}]}',
    "",
])
def test_pathological_json_gives_data_errors(text, tmp_path):
    path = tmp_path / "q.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="q.json"):
        load_questions(path)


def test_a_directory_or_binary_file_instead_of_json(tmp_path):
    with pytest.raises(DataError):
        load_questions(tmp_path)
    with pytest.raises(DataError, match="q.json"):
        load_questions(write(tmp_path / "q.json", b"\xff\xfe\x00garbage"))


VG_IMAGES = [{"image_id": 5, "coco_id": 1}, {"image_id": 6, "coco_id": None}, {"id": 7, "coco_id": 2}]
VG_QA = [{"id": 5, "qas": [{"qa_id": 1, "question": "What color is it?", "answer": "Red."}]},
         {"id": 7, "qas": [{"qa_id": 2, "question": "How many?", "answer": "two"},
                           {"qa_id": 3, "question": "Where?", "answer": "on the table"}]}]


@FUZZ
@given(which=st.sampled_from(["image_data.json", "question_answers.json"]), data=st.data())
def test_visual_genome_corruptions_give_data_errors(which, data, tmp_path):
    files = {"image_data.json": VG_IMAGES, "question_answers.json": VG_QA}
    if data.draw(st.booleans()):
        files[which] = data.draw(mutated(files[which]))
    else:
        files[which] = data.draw(garbled(json.dumps(files[which])))
    for name, value in files.items():
        write(tmp_path / name, value)
    try:
        found = load_visual_genome(tmp_path, {"vg-train": {1, 2}}, {"red": 0, "2": 1})
    except BanError as error:  # names the file it found wrong (the other may be where it showed)
        assert isinstance(error, DataError) and error.path is not None
        assert Path(error.path).parent == tmp_path and Path(error.path).name in files
        assert str(error).startswith(error.path)
        return
    for question in found.kept["vg-train"]:
        assert isinstance(question.question_id, int) and question.coco_image_id in {1, 2}
        assert question.label in (0, 1) and isinstance(question.question, str)


@FUZZ
@given(data=st.data())
def test_dictionary_corruptions_give_data_errors(data, tmp_path):
    original = {"tokens": ["what", "is", "the", "color"]}
    content = data.draw(mutated(original) | garbled(json.dumps(original)))
    path = write(tmp_path / "dictionary.json", content)
    try:
        dictionary = Dictionary.load(path)
    except DataError as error:
        assert "dictionary.json" in str(error)
        return
    parsed = json.loads(content) if isinstance(content, bytes) else content
    assert dictionary.tokens == parsed["tokens"]
    assert len(set(dictionary.tokens)) == len(dictionary.tokens) and all(isinstance(t, str) for t in parsed["tokens"])
