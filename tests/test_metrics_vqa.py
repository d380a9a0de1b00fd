"""The official VQA accuracy: hand-computed values, the official code's quirks, validation and `ban score`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ban.cli import main
from ban.commands import score as score_command
from ban.data.answers import soft_score
from ban.errors import DataError
from ban.metrics.vqa import load_results, question_accuracy, results_to_predictions, vqa_accuracy


def answers_of(*texts: str) -> list[dict]:
    """Official-format annotator answer records (each with its own answer_id)."""
    return [
        {"answer": text, "answer_confidence": "yes", "answer_id": index}
        for index, text in enumerate(texts, start=1)
    ]


def annotation(question_id: int, answer_type: str, question_type: str, answers: list[str]) -> dict:
    return {
        "question_id": question_id,
        "image_id": 1000 + question_id,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": answers_of(*answers),
    }


# --- per-question accuracy, computed by hand --------------------------------------------------------------


@pytest.mark.parametrize(
    ("agreeing", "expected"),
    [
        # k annotators of 10 gave the predicted answer. Leaving out one of the k: k-1 remain among 9;
        # leaving out one of the other 10-k: k remain. acc = mean of min(1, remaining/3).
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, (4 * 1 + 6 * 1) / 10),  # 1.0
        (9, 1.0),
    ],
)
def test_accuracy_by_number_of_agreeing_annotators(agreeing: int, expected: float) -> None:
    answers = answers_of(*(["2"] * agreeing + ["3"] * (10 - agreeing)))
    assert question_accuracy("two", answers) == pytest.approx(expected, abs=1e-12)
    # the training targets' soft scores are this very leave-one-out average
    assert question_accuracy("2", answers) == pytest.approx(soft_score(agreeing), abs=1e-12)


def test_prediction_is_fully_normalised() -> None:
    answers = answers_of(*(["dog"] * 3 + ["cat"] * 7))
    assert question_accuracy("  The Dog.\n", answers) == pytest.approx(0.9)
    assert question_accuracy("A cat!", answers) == pytest.approx(1.0)
    # tabs become spaces before the punctuation stage (official vqaEval.py): "t-shirt -" has " -", so every "-" is
    # deleted ("tshirt"); left as a tab, no " -" would be found and "-" would become a space ("t shirt")
    assert question_accuracy("t-shirt\t-", answers_of(*["tshirt"] * 10)) == 1.0


def test_all_agree_quirk_compares_without_normalising() -> None:
    # all ten identical: annotator answers are NOT touched, the prediction is: "t-shirt" → "t shirt" ≠ "t-shirt"
    assert question_accuracy("t-shirt", answers_of(*["t-shirt"] * 10)) == 0.0
    # one dissenter: annotator answers get the punctuation stage, "t-shirt" → "t shirt", 9 matches
    assert question_accuracy("t-shirt", answers_of(*(["t-shirt"] * 9 + ["shirt"]))) == 1.0
    # identical answers that normalisation leaves alone still match
    assert question_accuracy("yes", answers_of(*["yes"] * 10)) == 1.0


def test_annotator_answers_never_get_the_second_stage() -> None:
    # "Dog" keeps its capital (stage 1 only), while any prediction is lower-cased: no prediction matches it
    answers = answers_of(*(["Dog"] * 5 + ["cat"] * 5))
    assert question_accuracy("Dog", answers) == 0.0
    assert question_accuracy("dog", answers) == 0.0
    # number words in annotator answers are not mapped either
    assert question_accuracy("two", answers_of(*(["two"] * 5 + ["3"] * 5))) == 0.0


def test_leave_one_out_compares_whole_records_as_the_official_code() -> None:
    # without answer ids, equal records are "the same annotator": leaving out one "yes" drops all three
    answers = [{"answer": "yes"}] * 3 + [{"answer": "no"}] * 7
    assert question_accuracy("yes", answers) == pytest.approx((3 * 0 + 7 * 1) / 10)
    # with the official answer ids each record is distinct: 3 of 10 → 0.9
    assert question_accuracy("yes", answers_of(*(["yes"] * 3 + ["no"] * 7))) == pytest.approx(0.9)


@given(st.lists(st.sampled_from(["yes", "no", "2", "red"]), min_size=1, max_size=12), st.sampled_from(
    ["yes", "no", "2", "red", "blue"]))
def test_accuracy_matches_closed_form(given_answers: list[str], predicted: str) -> None:
    n = len(given_answers)
    k = given_answers.count(predicted)
    expected = (k * min(1, (k - 1) / 3) + (n - k) * min(1, k / 3)) / n
    assert question_accuracy(predicted, answers_of(*given_answers)) == pytest.approx(expected, abs=1e-12)


# --- aggregation -----------------------------------------------------------------------------------------


def six_annotations() -> list[dict]:
    return [
        annotation(1, "yes/no", "is the", ["yes"] * 10),
        annotation(2, "yes/no", "is the", ["yes"] * 6 + ["no"] * 4),
        annotation(3, "number", "how many", ["2"] * 3 + ["3"] * 7),
        annotation(4, "other", "what color", ["red"] * 1 + ["blue"] * 9),
        annotation(5, "other", "what color", ["red"] * 2 + ["blue"] * 8),
        annotation(6, "other", "what is", ["cat"] * 2 + ["dog"] * 8),
    ]


SIX_PREDICTIONS = {1: "yes", 2: "maybe", 3: "two", 4: "red", 5: "Red.", 6: "a cat"}


def test_overall_and_per_type_percentages() -> None:
    scores = vqa_accuracy(six_annotations(), SIX_PREDICTIONS)
    # accuracies 1.0, 0.0, 0.9, 0.3, 0.6, 0.6
    assert scores["overall"] == 56.67  # 100 * 3.4 / 6 = 56.666…
    assert scores["perAnswerType"] == {"yes/no": 50.0, "number": 90.0, "other": 50.0}
    assert scores["perQuestionType"] == {"is the": 50.0, "how many": 90.0, "what color": 45.0, "what is": 60.0}
    assert list(scores["perAnswerType"]) == ["yes/no", "number", "other"]


def test_rounding_to_two_decimals() -> None:
    annotations = [annotation(i, "other", "what", ["a1"] + ["b"] * 9) for i in range(1, 4)]
    scores = vqa_accuracy(annotations, {1: "a1", 2: "x", 3: "x"})
    assert scores["overall"] == 10.0  # 100 * 0.3 / 3
    annotations = [annotation(i, "other", "what", ["c"] * 10) for i in range(1, 8)]
    scores = vqa_accuracy(annotations, {i: ("c" if i == 1 else "x") for i in range(1, 8)})
    assert scores["overall"] == 14.29  # 100 / 7 = 14.2857…


def test_in_memory_predictions_must_cover_the_annotations_exactly() -> None:
    with pytest.raises(DataError, match="1 annotated questions have no answer .question_id 6"):
        vqa_accuracy(six_annotations(), {k: v for k, v in SIX_PREDICTIONS.items() if k != 6})
    with pytest.raises(DataError, match="not in the annotations") as caught:
        vqa_accuracy(six_annotations(), {**SIX_PREDICTIONS, 99: "yes"})
    assert caught.value.record == 99 and caught.value.field == "question_id"
    with pytest.raises(DataError, match="no annotated questions"):
        vqa_accuracy([], {})


def test_result_records_are_validated() -> None:
    ids = [1, 2]
    good = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "no", "extra": 0}]
    assert results_to_predictions(good, ids) == {1: "yes", 2: "no"}
    cases = [
        ([{"question_id": 1, "answer": "yes"}, "oops"], 1, None, "expected an object"),
        ([{"question_id": "1", "answer": "yes"}], 0, "question_id", "expected int, got str"),
        ([{"question_id": True, "answer": "yes"}], 0, "question_id", "expected int, got bool"),
        ([{"question_id": 1}], "0 (question_id=1)", "answer", "expected str, got nothing"),
        ([{"question_id": 1, "answer": 3}], "0 (question_id=1)", "answer", "expected str, got int"),
        (good + [{"question_id": 1, "answer": "no"}], "2 (question_id=1)", "question_id", "answered twice"),
        (good + [{"question_id": 7, "answer": "no"}], "2 (question_id=7)", "question_id", "not in the annot"),
        (good[:1], None, "question_id", "1 annotated questions have no answer"),
    ]
    for records, record, field, message in cases:
        with pytest.raises(DataError, match=message) as caught:
            results_to_predictions(records, ids, path="r.json")
        assert caught.value.path == "r.json"
        assert caught.value.record == record
        assert caught.value.field == field


def test_results_file_must_be_a_list_of_records(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"question_id": 1, "answer": "yes"}))
    with pytest.raises(DataError, match="expected a JSON list") as caught:
        load_results(path, [1])
    assert caught.value.path == str(path)
    path.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_results(path, [1])
    with pytest.raises(DataError, match="file not found"):
        load_results(tmp_path / "missing.json", [1])


# --- `ban score` on official-format files ------------------------------------------------------------------


def write_official_files(directory: Path, annotations: list[dict], results: list[dict]) -> list[str]:
    """Questions, annotations and results in the official formats; returns the `ban score` file options."""
    header = {"info": {"description": "test"}, "license": {"name": "test"}, "data_subtype": "val2014"}
    questions = [
        {"question_id": a["question_id"], "image_id": a["image_id"], "question": f"question {a['question_id']}?"}
        for a in annotations
    ]
    paths = {name: directory / f"{name}.json" for name in ("questions", "annotations", "results")}
    paths["questions"].write_text(json.dumps({**header, "task_type": "Open-Ended", "questions": questions}))
    paths["annotations"].write_text(json.dumps({**header, "annotations": annotations}))
    paths["results"].write_text(json.dumps(results))
    return [f"--{name}={path}" for name, path in paths.items()]


SIX_RESULTS = [{"question_id": k, "answer": v} for k, v in SIX_PREDICTIONS.items()]


def run_score(options: list[str]) -> int:
    """`ban score` through its own module (the full CLI is exercised in the error test below)."""
    parser = argparse.ArgumentParser()
    score_command.add_arguments(parser)
    return score_command.run(parser.parse_args(options))


def test_score_command_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = write_official_files(tmp_path, six_annotations(), SIX_RESULTS)
    assert run_score([*options, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["overall"] == 56.67
    assert scores["perAnswerType"] == {"yes/no": 50.0, "number": 90.0, "other": 50.0}
    assert scores["perQuestionType"]["what color"] == 45.0


def test_score_command_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = write_official_files(tmp_path, six_annotations(), SIX_RESULTS)
    assert run_score(options) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["overall", "56.67"]
    assert ["yes/no", "50.00"] in [line.split() for line in lines]
    assert ["what", "color", "45.00"] in [line.split() for line in lines]


def test_score_command_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = write_official_files(tmp_path, six_annotations(), SIX_RESULTS[:-1])
    assert main(["score", *options, "--json"]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "results.json") in error and "question_id 6" in error

    broken = six_annotations()
    broken[2]["answers"][4] = {"answer": 4}
    options = write_official_files(tmp_path, broken, SIX_RESULTS)
    assert main(["score", *options]) == 2
    error = capsys.readouterr().err
    assert "annotations.json" in error and "record 2 (question_id=3)" in error and "answers[4]" in error

    options = write_official_files(tmp_path, six_annotations(), SIX_RESULTS)
    questions = json.loads((tmp_path / "questions.json").read_text())
    questions["questions"][0]["image_id"] = 5
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    assert main(["score", *options]) == 2
    assert "field 'image_id'" in capsys.readouterr().err

    options = write_official_files(tmp_path, [], [])
    assert main(["score", *options]) == 2
    assert f"{tmp_path / 'annotations.json'}: field 'annotations': no annotated questions" in capsys.readouterr().err


def test_score_says_when_the_questions_and_annotations_are_swapped(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    questions, annotations, results = write_official_files(tmp_path, six_annotations(), SIX_RESULTS)
    swapped = [questions.replace("--questions", "--annotations"), annotations.replace("--annotations", "--questions")]
    assert main(["score", *swapped, results]) == 2
    assert capsys.readouterr().err == (f"ban score: error: {tmp_path / 'questions.json'}: field 'annotations': an "
                                       "official questions file, not the annotations file (it lists 'questions'): were "
                                       "the two files swapped?\n")
