"""`ban synth --questions-per-image` and `--annotator-accuracy`: what each changes in the files, and their ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ban.cli import main
from ban.data.answers import normalize_answer

# a tiny set: 10 VQA images (7 train / 2 val / 1 test-dev; the fewest allowed), no Flickr30k images, no PNGs
TINY = ["--images", "10", "--flickr-images", "0", "--feature-dim", "8", "--seed", "5", "--no-png", "--quiet"]


def synth(out: Path, *options: str) -> dict:
    assert main(["synth", "--out", str(out), *TINY, *options]) == 0
    return json.loads((out / "stats.json").read_text())


def records(out: Path, kind: str) -> list[dict]:
    """Every VQA question (``kind="questions"``) or annotation record of the generated set, all splits."""
    pattern = "*_questions.json" if kind == "questions" else "*_annotations.json"
    return [record for path in sorted((out / "vqa").glob(pattern))
            for record in json.loads(path.read_text())[kind]]


def test_questions_per_image_sets_how_many_questions_each_image_gets(tmp_path: Path) -> None:
    """A whole number: exactly that many questions per image, in every split; a fraction: between the two."""
    for per_image in (1, 3, 20):  # the range's ends and a value between
        out = tmp_path / str(per_image)
        stats = synth(out, "--questions-per-image", str(per_image))
        assert stats["questions_per_image"] == per_image
        for split in ("train", "val", "test-dev"):
            assert stats["vqa"][split]["questions"] == per_image * stats["vqa"][split]["images"], (per_image, split)
        questions = records(out, "questions")
        assert len(questions) == per_image * 10
        per_image_counts: dict[int, int] = {}
        for question in questions:
            per_image_counts[question["image_id"]] = per_image_counts.get(question["image_id"], 0) + 1
        assert sorted(set(per_image_counts.values())) == [per_image]
    stats = synth(tmp_path / "2.5", "--questions-per-image", "2.5")
    counts = [stats["vqa"][split]["questions"] for split in ("train", "val", "test-dev")]
    images = [stats["vqa"][split]["images"] for split in ("train", "val", "test-dev")]
    assert 2 * sum(images) < sum(counts) < 3 * sum(images)


def test_annotator_accuracy_sets_how_often_annotators_agree(tmp_path: Path) -> None:
    """1: every annotator gives the true answer (after the official normalisation of the spelling variants);
    lower accuracies: fewer annotators agree with the question's answer."""
    agreement, questions, unchanged = {}, {}, {}
    for accuracy in ("1", "0.88", "0.5"):
        out = tmp_path / accuracy
        stats = synth(out, "--annotator-accuracy", accuracy)
        assert stats["annotator_accuracy"] == float(accuracy)
        annotations = records(out, "annotations")
        assert len(annotations) == 46
        # the same questions whatever the accuracy (texts, ids, images, types): only the annotators' answers change,
        # and with them multiple_choice_answer (officially their most frequent answer)
        questions[accuracy] = records(out, "questions")
        unchanged[accuracy] = [{key: value for key, value in record.items()
                                if key not in ("answers", "multiple_choice_answer")} for record in annotations]
        answers = [(normalize_answer(answer["answer"]), normalize_answer(record["multiple_choice_answer"]))
                   for record in annotations for answer in record["answers"]]
        agreement[accuracy] = sum(given == majority for given, majority in answers) / len(answers)
        if accuracy == "1":
            assert all(len({normalize_answer(a["answer"]) for a in record["answers"]}) == 1
                       for record in annotations)
    assert questions["1"] == questions["0.88"] == questions["0.5"]
    assert unchanged["1"] == unchanged["0.88"] == unchanged["0.5"]
    assert agreement["1"] == 1.0
    assert agreement["1"] > agreement["0.88"] > agreement["0.5"]
    assert agreement["0.5"] < 0.8


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--questions-per-image", "0.9", "--questions-per-image must be in [1, 20], got 0.9"),
        ("--questions-per-image", "20.5", "--questions-per-image must be in [1, 20], got 20.5"),
        ("--annotator-accuracy", "0.49", "--annotator-accuracy must be in [0.5, 1], got 0.49"),
        ("--annotator-accuracy", "1.01", "--annotator-accuracy must be in [0.5, 1], got 1.01"),
    ],
)
def test_out_of_range_values_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                                 value: str, message: str) -> None:
    assert main(["synth", "--out", str(tmp_path / "out"), *TINY, option, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "stats.json").exists()


def test_the_help_states_the_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--questions-per-image QUESTIONS_PER_IMAGE mean questions per VQA image, in [1, 20]" in text
    assert ("--annotator-accuracy ANNOTATOR_ACCURACY mean share of annotators giving the true answer, in [0.5, 1]"
            in text)
    docs = " ".join((Path(__file__).parents[1] / "docs" / "synthetic.md").read_text().split())
    assert "`--questions-per-image` (mean, in [1, 20]" in docs and "`--annotator-accuracy` (in [0.5, 1]" in docs
