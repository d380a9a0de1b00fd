"""VQA 2.0 preparation on small files in exactly the official formats, with hand-computed expectations."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_features import expected_spatial, random_image, write_official_tsv

from ban.cli import main
from ban.data.collate import collate_vqa
from ban.data.glove import read_glove
from ban.data.vqa2 import VQADataset, prepare_vqa2, soft_targets
from ban.engine.config import TrainConfig
from ban.engine.tasks import VQATask, check_splits
from ban.errors import ConfigError, DataError

INFO = {"description": "test", "version": "2.0", "year": 2017}
LICENSE = {"name": "CC", "url": "http://creativecommons.org"}


def question(question_id: int, image_id: int, text: str) -> dict:
    return {"question_id": question_id, "image_id": image_id, "question": text}


def annotation(question_id: int, image_id: int, mc: str, answers: list[str], answer_type: str) -> dict:
    assert len(answers) == 10
    return {
        "question_id": question_id, "image_id": image_id, "question_type": "what", "answer_type": answer_type,
        "multiple_choice_answer": mc,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


TRAIN_QUESTIONS = [  # file order is not question-id order on purpose
    question(11, 1, "Is the cat's tail long?"),
    question(10, 1, "What color is the cat?"),
    question(12, 2, "How many dogs are there?"),
    question(13, 3, "What is on the table?"),
]
TRAIN_ANNOTATIONS = [
    annotation(10, 1, "black", ["black"] * 4 + ["white"] * 3 + ["gray"] * 2 + ["Black"], "other"),
    annotation(11, 1, "yes", ["yes"] * 10, "yes/no"),
    annotation(12, 2, "two", ["2"] * 5 + ["two"] * 2 + ["3"] * 3, "number"),
    annotation(13, 3, "a book", ["book"] * 2 + ["books"] * 8, "other"),
]
VAL_QUESTIONS = [question(20, 4, "What color is the dog?"), question(21, 4, "Is it a cat?")]
VAL_ANNOTATIONS = [
    annotation(20, 4, "Black", ["black"] + ["dark"] * 9, "other"),
    annotation(21, 4, "no", ["no"] * 3 + ["yes"] * 2 + ["nope"] * 5, "yes/no"),
]
TEST_QUESTIONS = [question(30, 5, "What is the man holding?"), question(31, 5, "Why, sir?")]
TEST_DEV_QUESTIONS = [question(30, 5, "What is the man holding?")]

# Hand-computed from the files above.
EXPECTED_TOKENS = ["is", "the", "cat", "'s", "tail", "long", "what", "color", "how", "many", "dogs", "are",
                   "there", "on", "table", "dog", "it", "a", "man", "holding", "why", "sir"]
EXPECTED_ANSWERS = ["black", "2", "book", "no", "yes"]  # black: 2 questions; then count 1, alphabetical


def write_questions(path: Path, subtype: str, records: list[dict]) -> None:
    path.write_text(json.dumps({"info": INFO, "task_type": "Open-Ended", "data_type": "mscoco",
                                "license": LICENSE, "data_subtype": subtype, "questions": records}))


def write_annotations(path: Path, subtype: str, records: list[dict]) -> None:
    path.write_text(json.dumps({"info": INFO, "license": LICENSE, "data_subtype": subtype,
                                "annotations": records}))


@pytest.fixture()
def raw(tmp_path) -> dict:
    """Official-format files: questions/annotations in root/, features in two TSV files."""
    root = tmp_path / "raw"
    root.mkdir()
    write_questions(root / "v2_OpenEnded_mscoco_train2014_questions.json", "train2014", TRAIN_QUESTIONS)
    write_annotations(root / "v2_mscoco_train2014_annotations.json", "train2014", TRAIN_ANNOTATIONS)
    write_questions(root / "v2_OpenEnded_mscoco_val2014_questions.json", "val2014", VAL_QUESTIONS)
    write_annotations(root / "v2_mscoco_val2014_annotations.json", "val2014", VAL_ANNOTATIONS)
    write_questions(root / "v2_OpenEnded_mscoco_test2015_questions.json", "test2015", TEST_QUESTIONS)
    write_questions(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json", "test-dev2015", TEST_DEV_QUESTIONS)
    rng = np.random.default_rng(1)
    images = {image_id: random_image(rng, image_id, count, 8) for image_id, count in
              [(1, 12), (2, 3), (3, 36), (4, 10), (5, 7), (6, 4)]}
    write_official_tsv(tmp_path / "trainval.tsv", [images[i] for i in (1, 2, 3, 4, 6)])
    write_official_tsv(tmp_path / "test2015.tsv", [images[5]])
    return {"root": root, "features": [tmp_path / "trainval.tsv", tmp_path / "test2015.tsv"], "images": images,
            "out": tmp_path / "data"}


def test_prepare_writes_the_contract(raw) -> None:
    manifest = prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    out = raw["out"]
    assert json.loads((out / "dictionary.json").read_text()) == {"tokens": EXPECTED_TOKENS}
    assert json.loads((out / "answers.json").read_text()) == EXPECTED_ANSWERS
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {
        "train": {"questions": 4, "annotated": True, "official_files": True, "source": "vqa2"},
        "val": {"questions": 2, "annotated": True, "official_files": True, "source": "vqa2"},
        "test": {"questions": 2, "annotated": False, "official_files": True, "source": "vqa2"},
        "test-dev": {"questions": 1, "annotated": False, "official_files": True, "source": "vqa2"},
    }
    assert (manifest["num_tokens"], manifest["padding_index"], manifest["num_answers"]) == (22, 22, 5)
    assert (manifest["feature_dim"], manifest["num_images"], manifest["question_length"]) == (8, 6, 14)
    for split, official in [("train", "train2014"), ("val", "val2014"), ("test", "test2015")]:
        source = raw["root"] / f"v2_OpenEnded_mscoco_{official}_questions.json"
        assert (out / f"{split}_questions.json").read_bytes() == source.read_bytes()
    source = raw["root"] / "v2_mscoco_val2014_annotations.json"
    assert (out / "val_annotations.json").read_bytes() == source.read_bytes()
    assert not (out / "test_annotations.json").exists()

    with np.load(out / "train.npz") as train:
        assert train["question_id"].tolist() == [11, 10, 12, 13]
        assert train["image_id"].tolist() == [1, 1, 2, 3]
        assert train["answer_type"].tolist() == ["yes/no", "other", "number", "other"]
        # "Is the cat's tail long?" → is the cat 's tail long, padded with 22
        assert train["tokens"][0].tolist() == [0, 1, 2, 3, 4, 5] + [22] * 8
        assert train["target_offsets"].tolist() == [0, 1, 2, 3, 4]
        # yes×10 → 1.0; black×4 (raw "Black" is another string) → 1.0; "2"×5 → 1.0; "book"×2 → 0.6
        assert train["target_labels"].tolist() == [4, 0, 1, 2]
        np.testing.assert_allclose(train["target_scores"], [1.0, 1.0, 1.0, 0.6])
    with np.load(out / "val.npz") as val:
        assert val["target_offsets"].tolist() == [0, 1, 3]
        assert val["target_labels"].tolist() == [0, 3, 4]  # black×1; no×3, yes×2 ("nope" is no candidate)
        np.testing.assert_allclose(val["target_scores"], [0.3, 0.9, 0.6])
        # "Is it a cat?": is it a cat; "a" is a token (articles are only dropped from answers)
        assert val["tokens"][1].tolist() == [0, 16, 17, 2] + [22] * 10


def test_soft_targets_count_the_annotators_raw_answers():
    """The reference counts each annotator's answer string as given (PAPER.md §3, its compute_softscore): "Black"
    is not "black", so black×2 scores 0.6 (lower-cased first it would be black×3: 0.9); "red" is no candidate."""
    answers = [{"answer": answer} for answer in ["Black", "black", "white", "black"] + ["white"] * 5 + ["red"]]
    assert soft_targets(answers, {"white": 1, "black": 0}) == ([0, 1], [0.6, 1.0])  # in order of first appearance


def test_dataset_items_and_batches(raw) -> None:
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    train = VQADataset(raw["out"], "train")
    assert len(train) == 4 and train.num_answers == 5 and train.padding_index == 22
    item = train[2]  # question 12 about image 2
    image = raw["images"][2]
    assert item["question_id"] == 12
    torch.testing.assert_close(item["features"], torch.from_numpy(image["features"]))
    torch.testing.assert_close(item["boxes"], torch.from_numpy(expected_spatial(image)).float(), rtol=1e-6, atol=1e-6)
    assert item["question"].dtype == torch.int64 and item["question"].tolist() == [8, 9, 10, 11, 12] + [22] * 9
    assert item["target"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert train.box_counts().tolist() == [12, 12, 3, 36]

    batch = collate_vqa([train[0], train[2], train[3]])
    assert batch["features"].shape == (3, 36, 8) and batch["boxes"].shape == (3, 36, 6)
    assert batch["box_mask"].sum(1).tolist() == [12, 3, 36]
    assert batch["features"][1, 3:].abs().sum() == 0 and batch["boxes"][1, 3:].abs().sum() == 0
    torch.testing.assert_close(batch["features"][1, :3], item["features"])
    assert batch["questions"].dtype == torch.int64 and batch["questions"].shape == (3, 14)
    assert batch["targets"].shape == (3, 5) and batch["question_ids"].tolist() == [11, 12, 13]

    test = VQADataset(raw["out"], "test")
    assert [test[i]["question_id"] for i in range(len(test))] == [30, 31]
    assert test[0]["target"].tolist() == [0.0] * 5
    with pytest.raises(DataError, match="no split 'vg-train'"):
        VQADataset(raw["out"], "vg-train")


def test_collate_pads_to_the_largest_box_count() -> None:
    samples = [
        {"features": torch.full((2, 3), 1.0), "boxes": torch.full((2, 6), 0.5), "question": torch.arange(14),
         "target": torch.tensor([0.0, 1.0]), "question_id": 5},
        {"features": torch.full((4, 3), 2.0), "boxes": torch.full((4, 6), 0.25), "question": torch.zeros(14).long(),
         "target": torch.tensor([0.3, 0.0]), "question_id": 9},
    ]
    batch = collate_vqa(samples)
    expected_features = torch.tensor([[[1.0] * 3] * 2 + [[0.0] * 3] * 2, [[2.0] * 3] * 4])
    torch.testing.assert_close(batch["features"], expected_features)
    assert batch["box_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["boxes"][0, 2:].abs().sum() == 0 and batch["boxes"][0, :2].eq(0.5).all()
    torch.testing.assert_close(batch["targets"], torch.tensor([[0.0, 1.0], [0.3, 0.0]]))
    assert batch["question_ids"].tolist() == [5, 9] and batch["questions"][0].tolist() == list(range(14))


def test_min_answer_count_filters_candidates(raw) -> None:
    manifest = prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=2, splits=["train", "val"],
                            progress=False)
    assert json.loads((raw["out"] / "answers.json").read_text()) == ["black"]
    assert sorted(manifest["splits"]) == ["train", "val"]
    # the dictionary still covers every question file present
    assert json.loads((raw["out"] / "dictionary.json").read_text())["tokens"] == EXPECTED_TOKENS


def test_question_without_features(raw, tmp_path) -> None:
    write_official_tsv(tmp_path / "some.tsv", [raw["images"][i] for i in (1, 3, 4, 5)])  # no image 2
    with pytest.raises(DataError, match="image 2 has no region features") as error:
        prepare_vqa2(raw["root"], [tmp_path / "some.tsv"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.path.endswith("v2_OpenEnded_mscoco_train2014_questions.json")
    assert error.value.record == "question_id=12" and error.value.field == "image_id"
    assert not (raw["out"] / "manifest.json").exists()


def test_inputs_are_checked_before_the_features_are_converted(raw, tmp_path) -> None:
    """A conversion takes minutes on real data: a bad --features list, --vg folder or GloVe file is reported
    first. The TSV here is damaged in its last record, so an error about anything else proves the order."""
    lines = raw["features"][0].read_bytes().split(b"\r\n")
    fields = lines[-2].split(b"\t")
    lines[-2] = b"\t".join(fields[:5] + [b"*" + fields[5][1:]])
    damaged = tmp_path / "damaged.tsv"
    damaged.write_bytes(b"\r\n".join(lines))
    test2015 = raw["features"][1]
    write_official_tsv(tmp_path / "again.tsv", [raw["images"][5]])
    (tmp_path / "vg").mkdir()
    (tmp_path / "glove.txt").write_text("what 0.1 0.2\nis 0.3\n")
    for features, options, message in [
        ([damaged], {}, "image 5 has no region features in the given --features"),
        ([damaged, test2015, tmp_path / "again.tsv"], {}, f"image 5 appears in more than one source: {test2015}, "
                                                          f"{tmp_path / 'again.tsv'}"),
        ([damaged, test2015], {"visual_genome": tmp_path / "vg"}, "image_data.json: file not found"),
        ([damaged, test2015], {"glove": tmp_path / "glove.txt"}, "glove.txt: record line 2: field 'vector'"),
        ([damaged, test2015], {}, "damaged.tsv: record line 5 .*: field 'features': bad base64"),  # then converted
    ]:
        with pytest.raises(DataError, match=message):
            prepare_vqa2(raw["root"], features, raw["out"], min_answer_count=1, progress=False, **options)
        assert not raw["out"].exists()


def test_features_from_pipes_are_prepared(raw, tmp_path) -> None:
    """A pipe (``--features <(zcat trainval.tsv.gz)``) can be read once, by the conversion: the questions'
    images are then checked after it."""
    def pipe_of(path: Path, name: str) -> Path:
        pipe = tmp_path / name
        os.mkfifo(pipe)
        threading.Thread(target=pipe.write_bytes, args=(path.read_bytes(),), daemon=True).start()
        return pipe

    pipes = [pipe_of(path, f"{path.name}.pipe") for path in raw["features"]]
    prepare_vqa2(raw["root"], pipes, raw["out"], min_answer_count=1, progress=False)
    item = VQADataset(raw["out"], "train")[3]  # question 13, image 3
    torch.testing.assert_close(item["features"], torch.from_numpy(raw["images"][3]["features"]))
    with pytest.raises(DataError, match="image 5 has no region features"):  # test2015's features not given
        prepare_vqa2(raw["root"], [pipe_of(raw["features"][0], "only.pipe")], tmp_path / "other",
                     min_answer_count=1, progress=False)
    assert not (tmp_path / "other").exists()


def test_malformed_json_names_file_and_line(raw) -> None:
    path = raw["root"] / "v2_mscoco_val2014_annotations.json"
    path.write_text('{"annotations": [\n  {"question_id": 20,\n  oops}\n]}')
    with pytest.raises(DataError, match="line 3") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.path == str(path)


def test_annotation_for_another_image(raw) -> None:
    records = [dict(r) for r in VAL_ANNOTATIONS]
    records[1]["image_id"] = 3
    write_annotations(raw["root"] / "v2_mscoco_val2014_annotations.json", "val2014", records)
    with pytest.raises(DataError, match="differs from the questions file's 4") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.field == "image_id" and "question_id=21" in str(error.value.record)
    assert error.value.path.endswith("v2_mscoco_val2014_annotations.json")


def test_annotation_of_a_question_the_questions_file_lacks(raw) -> None:
    write_annotations(raw["root"] / "v2_mscoco_val2014_annotations.json", "val2014",
                      [*VAL_ANNOTATIONS, {**VAL_ANNOTATIONS[0], "question_id": 77}])
    with pytest.raises(DataError, match="not in the questions file .*val2014_questions.json") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.field == "question_id" and error.value.record == "2 (question_id=77)"


def test_a_question_in_two_splits_is_refused(raw) -> None:
    """Val question 20 renamed 10, a train question's id; test-dev sharing test's ids is the official layout."""
    write_questions(raw["root"] / "v2_OpenEnded_mscoco_val2014_questions.json", "val2014",
                    [question(10, 4, "What color is the dog?"), VAL_QUESTIONS[1]])
    write_annotations(raw["root"] / "v2_mscoco_val2014_annotations.json", "val2014",
                      [{**VAL_ANNOTATIONS[0], "question_id": 10}, VAL_ANNOTATIONS[1]])
    with pytest.raises(DataError, match="also in v2_OpenEnded_mscoco_train2014_questions.json") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.record == "question_id=10" and error.value.path.endswith("val2014_questions.json")


@pytest.mark.parametrize(("test_dev", "field", "message"), [
    ([question(32, 5, "What is the man holding?")], "question_id", "not in v2_OpenEnded_mscoco_test2015_questions"),
    ([question(30, 6, "What is the man holding?")], "image_id", "image 6, but .*test2015_questions.json asks this "
                                                                "question about image 5"),
])
def test_test_dev_questions_must_be_test_questions(raw, test_dev, field, message) -> None:
    """test-dev is a subset of test (the server scores it among test's questions)."""
    write_questions(raw["root"] / "v2_OpenEnded_mscoco_test-dev2015_questions.json", "test-dev2015", test_dev)
    with pytest.raises(DataError, match=message) as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.path.endswith("test-dev2015_questions.json") and error.value.field == field
    assert error.value.record == f"0 (question_id={test_dev[0]['question_id']})"


def test_question_without_annotation(raw) -> None:
    write_annotations(raw["root"] / "v2_mscoco_val2014_annotations.json", "val2014", VAL_ANNOTATIONS[:1])
    with pytest.raises(DataError, match="no annotation") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert error.value.record == "question_id=21"


def test_a_prepare_failing_half_way_leaves_the_previous_dataset_whole(raw, tmp_path) -> None:
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    before = {path: path.read_bytes() for path in raw["out"].rglob("*") if path.is_file()}
    bad = tmp_path / "bad.tsv"
    lines = (tmp_path / "trainval.tsv").read_bytes().split(b"\r\n")
    assert lines[2].startswith(b"3\t")
    fields = lines[2].split(b"\t")
    fields[3] = b"4"  # image 3 claims 4 boxes: its arrays do not match
    lines[2] = b"\t".join(fields)
    bad.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DataError, match="num_boxes") as error:
        prepare_vqa2(raw["root"], [bad, raw["features"][1]], raw["out"], min_answer_count=1, progress=False)
    assert error.value.record.startswith("line 3") and error.value.field == "boxes"
    assert {path: path.read_bytes() for path in raw["out"].rglob("*") if path.is_file()} == before
    assert VQADataset(raw["out"], "val")[0]["question_id"] == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_rerun_reuses_a_finished_conversion(raw) -> None:
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    features = raw["out"] / "features" / "features.npy"
    stamp = features.stat().st_mtime_ns
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    assert features.stat().st_mtime_ns == stamp
    assert VQADataset(raw["out"], "val")[0]["question_id"] == 20


def test_authors_hdf5_cache_as_source(raw, tmp_path) -> None:
    from test_data_features import _write_authors_hdf5

    images = [raw["images"][i] for i in (1, 2, 3, 4, 5)]
    _write_authors_hdf5(tmp_path / "trainval.hdf5", images, adaptive=True)
    (tmp_path / "trainval_imgid2idx.pkl").write_bytes(b"(dp0\nI1\nI0\nsI2\nI1\nsI3\nI2\nsI4\nI3\nsI5\nI4\ns.")
    prepare_vqa2(raw["root"], [tmp_path / "trainval.hdf5"], raw["out"], min_answer_count=1, progress=False)
    assert not (raw["out"] / "features").exists()
    item = VQADataset(raw["out"], "train")[3]  # question 13, image 3
    torch.testing.assert_close(item["features"], torch.from_numpy(raw["images"][3]["features"]))


def write_visual_genome(vg: Path) -> Path:
    """Visual Genome QA files in the v1.2 layout: images 100 (COCO 1, train) and 102 (COCO 4, val) kept, 101 (no
    COCO id) and 103 (COCO 999, in no split) not."""
    vg.mkdir()
    (vg / "image_data.json").write_text(json.dumps([
        {"image_id": 100, "coco_id": 1, "width": 500}, {"image_id": 101, "coco_id": None},
        {"image_id": 102, "coco_id": 4}, {"image_id": 103, "coco_id": 999},
    ]))
    (vg / "question_answers.json").write_text(json.dumps([
        {"id": 100, "qas": [
            {"qa_id": 7, "image_id": 100, "question": "What color is the mat?", "answer": "Black."},
            {"qa_id": 8, "image_id": 100, "question": "Who is there?", "answer": "a zebra"},
            {"qa_id": 9, "image_id": 100, "question": "How many cats?", "answer": "Two"},
        ]},
        {"id": 101, "qas": [{"qa_id": 10, "image_id": 101, "question": "What?", "answer": "yes"}]},
        {"id": 102, "qas": [{"qa_id": 11, "image_id": 102, "question": "Is it wet?", "answer": "No"}]},
        {"id": 103, "qas": [{"qa_id": 12, "image_id": 103, "question": "Is it?", "answer": "yes"}]},
    ]))
    return vg


def test_visual_genome_augmentation(raw, tmp_path) -> None:
    vg = write_visual_genome(tmp_path / "vg")
    manifest = prepare_vqa2(raw["root"], raw["features"], raw["out"], visual_genome=vg, min_answer_count=1,
                            progress=False)
    assert manifest["splits"]["vg-train"] == {"questions": 2, "annotated": True, "official_files": False,
                                              "source": "visual_genome"}
    with np.load(raw["out"] / "vg-train.npz") as split:
        assert split["question_id"].tolist() == [7, 9] and split["image_id"].tolist() == [1, 1]
        assert split["target_labels"].tolist() == [0, 1]  # "Black." → black, "Two" → 2; "zebra" dropped
        assert split["target_scores"].tolist() == [1.0, 1.0]
        # "mat" is not in the VQA dictionary → unknown index 21
        assert split["tokens"][0].tolist()[:5] == [6, 7, 0, 1, 21]
    dataset = VQADataset(raw["out"], "vg-val")
    assert len(dataset) == 1 and dataset[0]["target"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    task = VQATask(raw["out"])  # Visual Genome QA trains, but has no official annotations to score
    assert task.splits_with_targets() == ["train", "val", "vg-train", "vg-val"]
    assert task.scored_splits() == ["train", "val"]
    check_splits(TrainConfig(train_splits=("train", "vg-train"), val_split="val"), task)
    with pytest.raises(ConfigError, match="'val_split': split 'vg-val' of .* has no annotations to score against; "
                                          "splits that have: train, val"):
        check_splits(TrainConfig(train_splits=("train", "vg-train"), val_split="vg-val"), task)
    with pytest.raises(DataError, match="'vg-val' has training targets but no official annotations"):
        task.annotations("vg-val")


def test_training_on_splits_without_a_question_is_refused(raw, tmp_path, capsys) -> None:
    """A Visual Genome set without an image of COCO's val: vg-val holds no question, so training on it alone would
    take no step and write NaN losses."""
    vg = write_visual_genome(tmp_path / "vg")
    images = json.loads((vg / "image_data.json").read_text())
    (vg / "image_data.json").write_text(json.dumps([{**image, "coco_id": None} if image["coco_id"] == 4 else image
                                                    for image in images]))
    prepare_vqa2(raw["root"], raw["features"], raw["out"], visual_genome=vg, min_answer_count=1, progress=False)
    assert len(VQADataset(raw["out"], "vg-val")) == 0
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(raw["out"]), "--out", str(run_dir), "--epochs", "1", "--preset", "tiny",
                 "--set", "model.hidden_dim=8", "--set", "model.word_dim=4", "--set", "train_splits=vg-val"]) == 2
    assert capsys.readouterr().err.endswith(
        f"ban train: error: training setting 'train_splits': vg-val of {raw['out']} hold no samples: nothing to train "
        "on\n")
    assert not run_dir.exists()


def test_training_on_fewer_samples_than_processes_is_refused(raw, tmp_path) -> None:
    """vg-val's one question under two processes: the only global batch would be dropped, nothing trained."""
    from ban.engine.distributed import DistContext
    from ban.engine.run import RunConfig, fingerprint
    from ban.engine.trainer import Trainer
    from ban.models import preset

    prepare_vqa2(raw["root"], raw["features"], raw["out"], visual_genome=write_visual_genome(tmp_path / "vg"),
                 min_answer_count=1, progress=False)
    task = VQATask(raw["out"])
    run = RunConfig("vqa", str(raw["out"]), preset("tiny", hidden_dim=8, word_dim=4, **task.model_sizes()),
                    TrainConfig(epochs=1, batch_size=2, train_splits=("vg-val",), val_split=""),
                    fingerprint(raw["out"]))
    with pytest.raises(ConfigError, match=f"training setting 'train_splits': vg-val of {raw['out']} hold 1 sample, "
                                          r"fewer than the 2 processes \(a batch smaller than that is dropped\): "
                                          "nothing to train on"):
        Trainer(tmp_path / "run", run, task, DistContext(0, 2, torch.device("cpu")), resume=False)


def test_glove_initialisation(raw, tmp_path) -> None:
    glove = tmp_path / "glove.txt"
    vectors = {"the": [0.5, -1.0, 2.0], "cat": [1.0, 0.0, 0.25], "dog": [-2.0, 3.0, 1.0], "zebra": [9.0, 9.0, 9.0]}
    glove.write_text("".join(f"{word} {' '.join(map(str, v))}\n" for word, v in vectors.items()))
    manifest = prepare_vqa2(raw["root"], raw["features"], raw["out"], glove=glove, min_answer_count=1,
                            progress=False)
    assert manifest["glove"] is True
    table = np.load(raw["out"] / "glove.npy")
    assert table.shape == (22, 3)
    for index, token in enumerate(EXPECTED_TOKENS):
        np.testing.assert_array_equal(table[index], vectors.get(token, [0.0, 0.0, 0.0]))

    texts = [q["question"] for q in TRAIN_QUESTIONS + VAL_QUESTIONS + TEST_QUESTIONS]
    np.testing.assert_allclose(np.load(raw["out"] / "glove_cooccurrence.npy"), naive_cooccurrence(texts, vectors),
                               rtol=1e-5, atol=1e-6)


def naive_cooccurrence(texts: list[str], vectors: dict[str, list[float]]) -> np.ndarray:
    """Option c's second table recomputed independently: for each dictionary word, the GloVe vectors of the words
    sharing a question with it, weighted by how often, the weights of a row summing to 1 — over the dictionary's
    words followed by the other words of ``texts`` (the reference added those to its dictionary first)."""
    words = list(EXPECTED_TOKENS)
    token_lists = []
    for text in texts:
        tokens = text.lower().replace("?", "").replace(",", "").replace("'s", " 's").split()
        words += [token for token in dict.fromkeys(tokens) if token not in words]
        token_lists.append([words.index(token) for token in tokens])
    counts = np.zeros((len(words), len(words)))
    for tokens in token_lists:
        for position, first in enumerate(tokens):
            for second in tokens[position + 1:]:
                counts[first, second] += 1
                counts[second, first] += 1
    table = np.array([vectors.get(word, [0.0, 0.0, 0.0]) for word in words])
    rows = counts[:len(EXPECTED_TOKENS)]
    return rows / rows.sum(axis=1, keepdims=True) @ table


def test_visual_genome_questions_all_take_part_in_the_cooccurrence_table(raw, tmp_path) -> None:
    """Every Visual Genome question — on a kept image or not — and its words outside the VQA dictionary ("mat",
    "who", "there", "wet", with GloVe vectors or not) count, as in the reference (it tokenised them into its
    dictionary before the co-occurrence statistics)."""
    glove = tmp_path / "glove.txt"
    vectors = {"the": [0.5, -1.0, 2.0], "cat": [1.0, 0.0, 0.25], "mat": [-3.0, 1.0, 4.0], "wet": [2.0, 2.0, -1.0]}
    glove.write_text("".join(f"{word} {' '.join(map(str, v))}\n" for word, v in vectors.items()))
    vg = write_visual_genome(tmp_path / "vg")
    prepare_vqa2(raw["root"], raw["features"], raw["out"], glove=glove, visual_genome=vg, min_answer_count=1,
                 progress=False)
    vg_texts = [qa["question"] for image in json.loads((vg / "question_answers.json").read_text())
                for qa in image["qas"]]
    texts = [q["question"] for q in TRAIN_QUESTIONS + VAL_QUESTIONS + TEST_QUESTIONS] + vg_texts
    expected = naive_cooccurrence(texts, vectors)
    np.testing.assert_allclose(np.load(raw["out"] / "glove_cooccurrence.npy"), expected, rtol=1e-5, atol=1e-6)
    without_vg = naive_cooccurrence(texts[:-len(vg_texts)], vectors)
    assert not np.allclose(expected, without_vg, rtol=1e-5, atol=1e-6)  # the Visual Genome questions weigh


def test_glove_file_with_a_word2vec_header_gives_the_same_tables(raw, tmp_path) -> None:
    lines = "the 0.5 -1 2\ncat 1 0 0.25\nzebra 9 9 9\n"
    (tmp_path / "glove.txt").write_text(lines)
    (tmp_path / "glove.w2v.txt").write_text("3 3\n" + lines)  # gensim's glove2word2vec adds "count width"
    for name in ("glove.txt", "glove.w2v.txt"):
        prepare_vqa2(raw["root"], raw["features"], tmp_path / name.replace(".txt", ""), glove=tmp_path / name,
                     min_answer_count=1, progress=False)
    for table in ("glove.npy", "glove_cooccurrence.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "glove" / table), np.load(tmp_path / "glove.w2v" / table))
    assert np.load(tmp_path / "glove" / "glove.npy").any()


def test_glove_file_with_a_bad_line(raw, tmp_path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("the 1 2 3\ncat 1 2\n")
    with pytest.raises(DataError, match="2 values, expected 3") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], glove=glove, min_answer_count=1, progress=False)
    assert error.value.record == "line 2"


def test_glove_words_holding_spaces_are_read(tmp_path) -> None:
    """glove.840B.300d has tokens such as '. . .': the vector is the last D fields, the word all before them."""
    glove = tmp_path / "glove.840B.3d.txt"
    glove.write_text("the 1 2 3\n. . . 4 5 6\ncat 7 8 9\n")
    vectors, found = read_glove(glove, [". . .", "cat", "dog"], progress=False)
    assert found == 2 and vectors.tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]
    glove.write_text("the 1 2 3\ncat 7 8 9 10\n")  # a wanted word with one number too many: not a spaced word
    with pytest.raises(DataError, match="4 values, expected 3") as error:
        read_glove(glove, ["cat"], progress=False)
    assert (error.value.record, error.value.field) == ("line 2", "vector")
    assert read_glove(glove, ["the"], progress=False)[1] == 1  # a line no word asked for is not parsed


def test_a_word_listed_twice_in_glove_takes_its_last_vector(tmp_path) -> None:
    """As the reference's dict of the file's lines did (a later line overwrote an earlier one), counted once."""
    glove = tmp_path / "glove.txt"
    glove.write_text("cat 1 2 3\nthe 4 5 6\ncat 7 8 9\n")
    vectors, found = read_glove(glove, ["cat"], progress=False)
    assert found == 1 and vectors.tolist() == [[7, 8, 9]]


@pytest.mark.parametrize("value", ["nan", "-inf", "1e999", "NaN"])
def test_glove_file_with_a_non_finite_value(raw, tmp_path, value) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text(f"the 1 2 3\ncat 1 {value} 3\n")
    with pytest.raises(DataError, match=f"'cat': value 2 of 3 is '{value}', not a finite float32") as error:
        prepare_vqa2(raw["root"], raw["features"], raw["out"], glove=glove, min_answer_count=1, progress=False)
    assert error.value.path == str(glove) and error.value.record == "line 2" and error.value.field == "vector"
    assert not (raw["out"] / "manifest.json").exists()


def _prepared_with_glove(raw, tmp_path) -> Path:
    """The raw set prepared with a 3-d GloVe file."""
    glove = tmp_path / "glove.txt"
    glove.write_text("the 0.5 -1 2\ncat 1 0 0.25\ndog -2 3 1\n")
    prepare_vqa2(raw["root"], raw["features"], raw["out"], glove=glove, min_answer_count=1, progress=False)
    return raw["out"]


def test_word_vectors_initialise_the_tables(raw, tmp_path) -> None:
    from ban.engine.tasks import make_task

    data = _prepared_with_glove(raw, tmp_path)
    table, second = make_task("vqa", data).word_vectors(3, two_tables=True)
    np.testing.assert_array_equal(table.numpy(), np.load(data / "glove.npy"))
    np.testing.assert_array_equal(second.numpy(), np.load(data / "glove_cooccurrence.npy"))


def test_word_vectors_of_another_width_are_reported(raw, tmp_path, capsys) -> None:
    """A 3-d GloVe table cannot initialise 300-d word tables: they start random, and stderr says so."""
    from ban.engine.tasks import make_task

    data = _prepared_with_glove(raw, tmp_path)
    capsys.readouterr()
    assert make_task("vqa", data).word_vectors(300, two_tables=False) is None
    warning = capsys.readouterr().err
    assert f"{data / 'glove.npy'} holds 3-d word vectors" in warning and "model.word_dim" in warning


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("glove.npy", lambda p: p.write_bytes(p.read_bytes()[:-20]), "not a readable .npy file"),
        ("glove.npy", lambda p: np.save(p, np.load(p)[:7]), "7 rows, but dictionary.json has 22 tokens"),
        ("glove.npy", lambda p: np.save(p, np.load(p)[:, 0]), "float32 array of shape [22]"),
        ("glove.npy", lambda p: np.save(p, np.load(p) * np.r_[1, 1, np.nan, np.ones(19)][:, None]),
         "NaN or infinite"),
        ("glove_cooccurrence.npy", lambda p: np.save(p, np.load(p)[:, :2]), "2-d vectors, but glove.npy's are 3-d"),
        ("glove_cooccurrence.npy", lambda p: p.write_bytes(b"garbage"), "not a readable .npy file"),
    ],
)
def test_bad_word_vector_files_are_refused(raw, tmp_path, name, damage, message) -> None:
    from ban.engine.tasks import make_task

    data = _prepared_with_glove(raw, tmp_path)
    damage(data / name)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        make_task("vqa", data).word_vectors(3, two_tables=True)
    assert error.value.path == str(data / name)
    if "NaN" in message:
        assert error.value.record == "row 2 (token 'cat')"


def test_command_line(raw, capsys) -> None:
    argv = ["prepare", "vqa2", "--root", str(raw["root"]), "--features", *map(str, raw["features"]),
            "--out", str(raw["out"]), "--min-answer-count", "1", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["num_answers"] == 5
    assert main(argv[:-1] + ["--feature-dim", "2048"]) == 2
    assert "expected 2048" in capsys.readouterr().err


def test_visual_genome_older_keys_and_bad_records(raw, tmp_path) -> None:
    from ban.data.visual_genome import coco_ids_of_vg_images, load_visual_genome

    (tmp_path / "image_data.json").write_text(json.dumps([{"id": 1, "coco_id": 5}, {"id": 2, "coco_id": None}]))
    assert coco_ids_of_vg_images(tmp_path / "image_data.json") == {1: 5, 2: None}
    (tmp_path / "question_answers.json").write_text(json.dumps([{"id": 1, "qas": [
        {"id": 4, "question": "Is it?", "answer": "Yes"}, {"id": 5, "question": "What?"}]}]))
    with pytest.raises(DataError, match="expected str, got nothing") as error:
        load_visual_genome(tmp_path, {"vg-train": {5}}, {"yes": 0})
    assert error.value.field == "answer" and "qas[1]" in error.value.record
    assert error.value.path == str(tmp_path / "question_answers.json")


def test_the_root_of_ban_synths_output_points_to_its_vqa_folder(raw, tmp_path, capsys) -> None:
    scenes = tmp_path / "scenes"  # `ban synth --out scenes` puts the question files in scenes/vqa
    shutil.copytree(raw["root"], scenes / "vqa")
    argv = ["prepare", "vqa2", "--root", str(scenes), "--features", *map(str, raw["features"]), "--out",
            str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "no official question files (" in error and f"they are in {scenes / 'vqa'}: give --root {scenes / 'vqa'}" \
        in error


def test_unknown_split_name(raw) -> None:
    with pytest.raises(DataError, match="unknown split 'dev'"):
        prepare_vqa2(raw["root"], raw["features"], raw["out"], splits=["dev"], progress=False)


@pytest.mark.parametrize(("change", "field", "message"), [
    (dict(target_labels=[0, 3, 5]), "target_labels", r"labels outside \[0, 5\)"),  # one past the 5 answers
    (dict(target_labels=[0, -1, 4]), "target_labels", r"labels outside \[0, 5\)"),
    (dict(target_offsets=[0, 4, 3]), "target_offsets", "target offsets do not fit the labels"),  # not monotone
    (dict(target_offsets=[0, 1, 2]), "target_offsets", "target offsets do not fit the labels"),  # a label left over
    (dict(target_offsets=[1, 1, 3]), "target_offsets", "target offsets do not fit the labels"),  # not from 0
    (dict(target_scores=[0.3, 0.9]), "target_offsets", "target offsets do not fit the labels"),  # a score missing
    (dict(target_scores=[0.3, float("nan"), 1.0]), "target_scores", r"soft score nan outside \[0, 1\]"),
    (dict(target_scores=[0.3, 0.9, 1.0001]), "target_scores", r"soft score 1.0001 outside \[0, 1\]"),
    (dict(target_scores=[-0.1, 0.9, 1.0]), "target_scores", r"soft score -0.1 outside \[0, 1\]"),
])
def test_targets_that_do_not_fit_are_refused_at_their_boundaries(raw, change, field, message) -> None:
    """val.npz holds offsets [0, 1, 3], labels [0, 3, 4] of 5 answers and 3 scores (as prepared above); each
    change takes one step past what fits."""
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    with np.load(raw["out"] / "val.npz") as npz:
        arrays = dict(npz)
    for name, values in change.items():
        arrays[name] = np.asarray(values, dtype=arrays[name].dtype)
    np.savez(raw["out"] / "val.npz", **arrays)
    with pytest.raises(DataError, match=message) as error:
        VQADataset(raw["out"], "val")
    assert error.value.field == field and error.value.path.endswith("val.npz")


def test_a_score_outside_0_1_names_its_question(raw) -> None:
    """val.npz's offsets [0, 1, 3]: the third score belongs to the second question."""
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    with np.load(raw["out"] / "val.npz") as npz:
        arrays = dict(npz)
    arrays["target_scores"] = np.array([0.3, 0.9, np.inf], dtype=np.float32)
    np.savez(raw["out"] / "val.npz", **arrays)
    with pytest.raises(DataError, match=r"soft score inf outside \[0, 1\]") as error:
        VQADataset(raw["out"], "val")
    assert error.value.record == f"question_id={arrays['question_id'][1]}"


def test_a_split_file_without_an_array_is_refused(raw) -> None:
    prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False)
    with np.load(raw["out"] / "val.npz") as npz:
        arrays = dict(npz)
    del arrays["tokens"]
    np.savez(raw["out"] / "val.npz", **arrays)
    with pytest.raises(DataError, match="got nothing") as error:
        VQADataset(raw["out"], "val")
    assert error.value.field == "tokens" and error.value.path.endswith("val.npz")
