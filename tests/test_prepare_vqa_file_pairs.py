"""`ban prepare vqa2` refuses inconsistent inputs that it used to pass over: an annotation file without its question
file, and Visual Genome files that list an image twice, a question id twice, or an image the other file lacks. Each
error names the file, record and field, and neither a fresh --out nor a previous dataset there is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_vqa2 import raw  # noqa: F401  (the fixture: official-format files, two TSV files)
from test_output_paths import snapshot

from ban.data.vqa2 import annotations_path, prepare_vqa2, questions_path
from ban.errors import DataError

# raw's images: 1, 2, 3 (train), 4 (val), 5 (test); 6 has features only.
VG_IMAGES = [{"image_id": 100, "coco_id": 1}, {"image_id": 101, "coco_id": None}, {"image_id": 102, "coco_id": 4}]
VG_QA = [
    {"id": 100, "qas": [{"qa_id": 7, "image_id": 100, "question": "How many cats?", "answer": "Two"}]},
    {"id": 101, "qas": [{"qa_id": 8, "image_id": 101, "question": "Is it wet?", "answer": "no"}]},
    {"id": 102, "qas": [{"qa_id": 9, "image_id": 102, "question": "Is it dry?", "answer": "yes"}]},
]


def prepare(raw, out: Path, **options) -> dict:  # noqa: F811
    return prepare_vqa2(raw["root"], raw["features"], out, min_answer_count=1, progress=False, **options)


@pytest.fixture()
def previous(raw) -> dict[str, bytes]:  # noqa: F811
    """A dataset prepared at ``raw["out"]`` from the intact files, as its files' bytes."""
    prepare(raw, raw["out"])
    return snapshot(raw["out"])


def refused(raw, previous: dict[str, bytes], **options) -> DataError:  # noqa: F811
    """The error of preparing with ``options`` into a fresh --out and over the previous dataset (the same both
    times), after checking that the one was not created and the other is byte for byte as it was."""
    fresh = raw["out"].parent / "fresh"
    with pytest.raises(DataError) as first:
        prepare(raw, fresh, **options)
    assert not fresh.exists()
    with pytest.raises(DataError) as again:
        prepare(raw, raw["out"], **options)
    assert str(again.value) == str(first.value)
    assert snapshot(raw["out"]) == previous
    return first.value


def write_vg(folder: Path, images: list[dict], questions: list[dict]) -> Path:
    """``folder`` holding ``image_data.json`` and ``question_answers.json`` (Visual Genome v1.2's formats)."""
    folder.mkdir()
    (folder / "image_data.json").write_text(json.dumps(images))
    (folder / "question_answers.json").write_text(json.dumps(questions))
    return folder


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_annotation_file_without_its_question_file_is_refused(raw, previous, split) -> None:  # noqa: F811
    missing, present = questions_path(raw["root"], split), annotations_path(raw["root"], split)
    missing.unlink()
    error = refused(raw, previous)
    assert str(error) == (f"{missing}: question file of split {split!r} is missing, but its annotation file "
                          f"{present.name} is present (official VQA v2 files: https://visualqa.org/download.html)")
    assert error.path == str(missing)


@pytest.mark.parametrize("key", ["image_id", "id"])  # "id" in older releases
@pytest.mark.parametrize("coco_id", [4, 1])  # another COCO image, or the same record again
def test_an_image_listed_twice_in_image_data_is_refused(raw, previous, tmp_path, key, coco_id) -> None:  # noqa: F811
    images = [{key: record["image_id"], "coco_id": record["coco_id"]} for record in VG_IMAGES]
    vg = write_vg(tmp_path / "vg", images + [{key: 100, "coco_id": coco_id}], VG_QA)
    error = refused(raw, previous, visual_genome=vg)
    assert str(error) == (f"{vg / 'image_data.json'}: record 3 (image_id=100): field {key!r}: image listed twice, "
                          "first as record 0")
    assert (error.path, error.record, error.field) == (str(vg / "image_data.json"), "3 (image_id=100)", key)


@pytest.mark.parametrize("key", ["qa_id", "id"])  # "id" in older releases
def test_a_question_id_listed_twice_in_question_answers_is_refused(raw, previous, tmp_path, key) -> None:  # noqa: F811
    questions = [{"id": image["id"], "qas": [{key if k == "qa_id" else k: v for k, v in qa.items()}
                                             for qa in image["qas"]]} for image in VG_QA]
    questions[2]["qas"].append({key: 8, "image_id": 102, "question": "What color?", "answer": "black"})
    vg = write_vg(tmp_path / "vg", VG_IMAGES, questions)
    error = refused(raw, previous, visual_genome=vg)
    where = "2 (id=102) qas[1]"
    assert str(error) == (f"{vg / 'question_answers.json'}: record {where}: field {key!r}: question listed twice, "
                          "first as record 1 (id=101) qas[0]")  # first on an image that is not a COCO image
    assert (error.path, error.record, error.field) == (str(vg / "question_answers.json"), where, key)


def test_an_image_missing_from_image_data_is_refused(raw, previous, tmp_path) -> None:  # noqa: F811
    questions = VG_QA + [{"id": 555, "qas": [{"qa_id": 10, "image_id": 555, "question": "Is it?", "answer": "yes"}]}]
    vg = write_vg(tmp_path / "vg", VG_IMAGES, questions)
    error = refused(raw, previous, visual_genome=vg)
    assert str(error) == f"{vg / 'question_answers.json'}: record 3 (id=555): field 'id': image not in image_data.json"
    assert (error.path, error.record, error.field) == (str(vg / "question_answers.json"), "3 (id=555)", "id")


def test_consistent_visual_genome_files_are_prepared(raw, tmp_path) -> None:  # noqa: F811
    """The files the refusals above alter are accepted as they are: image 101 is listed, without a COCO id."""
    manifest = prepare(raw, raw["out"], visual_genome=write_vg(tmp_path / "vg", VG_IMAGES, VG_QA))
    assert manifest["splits"]["vg-train"]["questions"] == 1 and manifest["splits"]["vg-val"]["questions"] == 1
