"""The files of `ban synth`, read back by independent readers (json, csv + base64 + numpy, xml.etree)."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ban.data.synthetic import generate

FEATURE_DIM = 24
QUESTION_FILES = {
    "train2014": "v2_OpenEnded_mscoco_train2014_questions.json",
    "val2014": "v2_OpenEnded_mscoco_val2014_questions.json",
    "test-dev2015": "v2_OpenEnded_mscoco_test-dev2015_questions.json",
}
ANNOTATION_FILES = {
    "train2014": "v2_mscoco_train2014_annotations.json",
    "val2014": "v2_mscoco_val2014_annotations.json",
}
TSV_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
ENTITY_TYPES = {"people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other"}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=3, num_images=60, feature_dim=FEATURE_DIM, flickr_images=20, progress=False, workers=1)
    return out


def read_tsv(path: Path) -> list[dict]:
    """Bottom-up TSV reader, as the authors' conversion script reads it."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    with open(path, newline="") as handle:
        for item in csv.DictReader(handle, delimiter="\t", fieldnames=TSV_FIELDS):
            n = int(item["num_boxes"])
            rows.append({
                "image_id": int(item["image_id"]),
                "w": int(item["image_w"]),
                "h": int(item["image_h"]),
                "boxes": np.frombuffer(base64.b64decode(item["boxes"]), dtype=np.float32).reshape(n, 4),
                "features": np.frombuffer(base64.b64decode(item["features"]), dtype=np.float32).reshape(n, -1),
            })  # fmt: skip
    return rows


def normalise(answer: str) -> str:
    """A small stand-in for the official answer normalisation (enough for the variants written)."""
    words = answer.lower().replace(".", "").split()
    words = [NUMBER_WORDS.get(w, "0" if w == "none" else w) for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


def test_question_files_have_official_fields(synth_dir: Path) -> None:
    ids = set()
    for subtype, name in QUESTION_FILES.items():
        data = json.loads((synth_dir / "vqa" / name).read_text())
        assert set(data) == {"info", "task_type", "data_type", "data_subtype", "questions", "license"}
        assert data["task_type"] == "Open-Ended" and data["data_type"] == "mscoco"
        assert data["data_subtype"] == subtype
        assert data["questions"], name
        for q in data["questions"]:
            assert set(q) == {"image_id", "question", "question_id"}
            assert isinstance(q["image_id"], int) and isinstance(q["question_id"], int)
            assert q["question"].endswith("?") and q["question"][0].isupper()
            assert q["question_id"] // 1000 == q["image_id"]
            ids.add(q["question_id"])
            tokens = q["question"].lower().replace("?", "").replace(",", "").split()
            assert len(tokens) <= 14
    assert len(ids) == sum(
        len(json.loads((synth_dir / "vqa" / n).read_text())["questions"]) for n in QUESTION_FILES.values()
    )


def test_annotation_files_have_official_fields_and_consistent_answers(synth_dir: Path) -> None:
    for subtype, name in ANNOTATION_FILES.items():
        data = json.loads((synth_dir / "vqa" / name).read_text())
        assert set(data) == {"info", "data_type", "data_subtype", "annotations", "license"}
        assert data["data_subtype"] == subtype
        questions = json.loads((synth_dir / "vqa" / QUESTION_FILES[subtype]).read_text())["questions"]
        assert [a["question_id"] for a in data["annotations"]] == [q["question_id"] for q in questions]
        for a in data["annotations"]:
            assert set(a) == {"question_id", "image_id", "question_type", "answer_type",
                              "multiple_choice_answer", "answers"}  # fmt: skip
            assert a["answer_type"] in {"yes/no", "number", "other"}
            assert isinstance(a["question_type"], str) and a["question_type"]
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] in {"yes", "maybe", "no"} for x in a["answers"])
            counts = Counter(normalise(x["answer"]) for x in a["answers"])
            mc = a["multiple_choice_answer"]
            assert mc == normalise(mc) and counts[mc] == max(counts.values())
            if a["answer_type"] == "yes/no":
                assert mc in ("yes", "no")
            if a["answer_type"] == "number":
                assert mc.isdigit()


def test_annotations_show_disagreement_and_spelling_variants(synth_dir: Path) -> None:
    data = json.loads((synth_dir / "vqa" / ANNOTATION_FILES["train2014"]).read_text())["annotations"]
    raw = [x["answer"] for a in data for x in a["answers"]]
    assert any(r != normalise(r) for r in raw), "no spelling variants"
    assert any(r[0].isupper() for r in raw) and any(r in NUMBER_WORDS for r in raw)
    disagreeing = sum(len({normalise(x["answer"]) for x in a["answers"]}) > 1 for a in data)
    assert 0.1 < disagreeing / len(data) < 0.9


def test_tsv_features_decode(synth_dir: Path) -> None:
    seen: set[int] = set()
    for name in ("train2014", "val2014", "test2015"):
        path = synth_dir / "features" / f"{name}.tsv"
        assert path.read_bytes().endswith(b"\r\n") and b"image_id" not in path.read_bytes()[:20]
        for row in read_tsv(path):
            assert row["image_id"] not in seen
            seen.add(row["image_id"])
            n = len(row["boxes"])
            assert 10 <= n <= 36
            assert row["features"].shape == (n, FEATURE_DIM)
            assert np.isfinite(row["features"]).all() and (row["features"] >= 0).all()
            assert row["features"].any(axis=1).all(), "an all-zero row would read as padding"
            b = row["boxes"]
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
            assert (b[:, 2] <= row["w"]).all() and (b[:, 3] <= row["h"]).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            png = synth_dir / "images" / f"COCO_{name}_{row['image_id']:012d}.png"
            with Image.open(png) as image:
                assert image.size == (row["w"], row["h"])
    questions = json.loads((synth_dir / "vqa" / QUESTION_FILES["train2014"]).read_text())["questions"]
    train_ids = {r["image_id"] for r in read_tsv(synth_dir / "features" / "train2014.tsv")}
    assert {q["image_id"] for q in questions} == train_ids


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_boxes_include_overlapping_duplicates(synth_dir: Path) -> None:
    rows = read_tsv(synth_dir / "features" / "train2014.tsv")
    with_duplicates = 0
    for row in rows:
        b = row["boxes"].astype(np.float64)
        high = [iou(b[i], b[j]) for i in range(len(b)) for j in range(i + 1, len(b))]
        with_duplicates += max(high) > 0.5
    assert with_duplicates >= 0.9 * len(rows)


# Flickr30k Entities: phrase syntax of the Sentences files.
PHRASE = re.compile(r"\[/EN#(\d+)((?:/\w+)+) ([^\]]+)\]")


def read_annotation_xml(path: Path) -> dict:
    """Like the dataset's own reader: boxes per entity id (0-based), scene and no-box entity ids."""
    root = ET.parse(path).getroot()
    out: dict = {"boxes": {}, "scene": [], "nobox": []}
    for element in root.find("size"):
        out[element.tag] = int(element.text)
    for obj in root.findall("object"):
        for name in obj.findall("name"):
            box = obj.find("bndbox")
            if box is not None:
                corners = [int(box.find(tag).text) - 1 for tag in ("xmin", "ymin", "xmax", "ymax")]
                out["boxes"].setdefault(name.text, []).append(corners)
            else:
                if int(obj.find("nobndbox").text) > 0:
                    out["nobox"].append(name.text)
                if int(obj.find("scene").text) > 0:
                    out["scene"].append(name.text)
    return out


def test_flickr_tree(synth_dir: Path) -> None:
    root = synth_dir / "flickr30k"
    splits = {name: (root / f"{name}.txt").read_text().split() for name in ("train", "val", "test")}
    ids = [i for ids in splits.values() for i in ids]
    assert len(ids) == len(set(ids)) == 20 and all(splits.values())
    features = {r["image_id"]: r for r in read_tsv(root / "features.tsv")}
    assert set(features) == {int(i) for i in ids}
    types: Counter = Counter()
    multi_box = scene = nobox = 0
    for image_id in ids:
        annotation = read_annotation_xml(root / "Annotations" / f"{image_id}.xml")
        row = features[int(image_id)]
        assert (annotation["width"], annotation["height"]) == (row["w"], row["h"])
        lines = (root / "Sentences" / f"{image_id}.txt").read_text().splitlines()
        assert len(lines) == 5
        for line in lines:
            phrases = PHRASE.findall(line)
            assert phrases, line
            assert PHRASE.sub("", line).count("[") == 0
            for entity_id, type_path, words in phrases:
                entity_type = type_path.strip("/")
                assert entity_type in ENTITY_TYPES and words.strip()
                types[entity_type] += 1
                has_box = entity_id in annotation["boxes"]
                flagged = entity_id in annotation["scene"] or entity_id in annotation["nobox"]
                assert has_box != flagged, (image_id, entity_id)
                if entity_type == "scene":
                    assert entity_id in annotation["scene"]
                for x1, y1, x2, y2 in annotation["boxes"].get(entity_id, []):
                    assert 0 <= x1 < x2 < row["w"] and 0 <= y1 < y2 < row["h"]
        multi_box += any(len(b) > 1 for b in annotation["boxes"].values())
        scene += bool(annotation["scene"])
        nobox += bool(annotation["nobox"])
        with Image.open(root / "images" / f"{image_id}.png") as image:
            assert image.size == (row["w"], row["h"])
    assert multi_box and scene and nobox
    assert set(types) >= {"scene", "bodyparts", "other"}


def test_stats_file_matches_the_files(synth_dir: Path) -> None:
    stats = json.loads((synth_dir / "stats.json").read_text())
    for split, subtype in (("train", "train2014"), ("val", "val2014"), ("test-dev", "test-dev2015")):
        questions = json.loads((synth_dir / "vqa" / QUESTION_FILES[subtype]).read_text())["questions"]
        assert stats["vqa"][split]["questions"] == len(questions)
        assert stats["vqa"][split]["images"] == len({q["image_id"] for q in questions})
    for split, subtype in (("train", "train2014"), ("val", "val2014")):
        annotations = json.loads((synth_dir / "vqa" / ANNOTATION_FILES[subtype]).read_text())["annotations"]
        assert stats["vqa"][split]["questions_per_answer_type"] == dict(
            sorted(Counter(a["answer_type"] for a in annotations).items())
        )


def blind_predictions(train_q: list, train_a: list, val_q: list, val_a: list, vocabulary: set[str]) -> dict:
    """The answer prior's and the question-only predictor's answers to the val questions, recomputed from the files
    alone, as results files: ``{"prior": [{"question_id", "answer"}, …], "question": […]}``."""

    def most_frequent(counter: Counter) -> str:
        best = max(counter.values())
        return min(a for a, n in counter.items() if n == best)

    def pattern(text: str) -> str:
        return " ".join("_" if w in vocabulary else w for w in text.lower().replace("?", "").split())

    text_of = {q["question_id"]: q["question"] for q in train_q + val_q}
    prior = most_frequent(Counter(a["multiple_choice_answer"] for a in train_a))
    by_text: dict[str, Counter] = {}
    by_pattern: dict[str, Counter] = {}
    for a in train_a:
        text = text_of[a["question_id"]]
        by_text.setdefault(text, Counter())[a["multiple_choice_answer"]] += 1
        by_pattern.setdefault(pattern(text), Counter())[a["multiple_choice_answer"]] += 1
    results: dict[str, list[dict]] = {"prior": [], "question": []}
    for a in val_a:
        text = text_of[a["question_id"]]
        if text in by_text:
            guess = most_frequent(by_text[text])
        elif pattern(text) in by_pattern:
            guess = most_frequent(by_pattern[pattern(text)])
        else:
            guess = prior
        for name, prediction in (("prior", prior), ("question", guess)):
            results[name].append({"question_id": a["question_id"], "answer": prediction})
    return results


def test_blind_baselines_are_the_official_scores_of_their_predictions(synth_dir: Path, tmp_path: Path) -> None:
    """The baselines in stats.json are what `ban score` (the official metric, as `ban evaluate` scores a model)
    gives the predictors' answers, recomputed from the files."""
    from ban.data.synthetic.scenes import ATTRIBUTE_VALUES, SHAPE_PLURALS
    from ban.metrics.vqa import score_files

    vocabulary = {w for values in ATTRIBUTE_VALUES for w in values} | set(SHAPE_PLURALS)
    files = {name: synth_dir / "vqa" / name for name in (QUESTION_FILES["train2014"], ANNOTATION_FILES["train2014"],
                                                         QUESTION_FILES["val2014"], ANNOTATION_FILES["val2014"])}
    load = lambda name: json.loads(files[name].read_text())  # noqa: E731
    predictions = blind_predictions(
        load(QUESTION_FILES["train2014"])["questions"], load(ANNOTATION_FILES["train2014"])["annotations"],
        load(QUESTION_FILES["val2014"])["questions"], load(ANNOTATION_FILES["val2014"])["annotations"],
        vocabulary,
    )  # fmt: skip
    stats = json.loads((synth_dir / "stats.json").read_text())["baselines"]
    for ours, theirs in (("answer_prior", "prior"), ("question_only", "question")):
        (tmp_path / f"{theirs}.json").write_text(json.dumps(predictions[theirs]))
        official = score_files(files[QUESTION_FILES["val2014"]], files[ANNOTATION_FILES["val2014"]],
                               tmp_path / f"{theirs}.json", progress=False)
        assert stats[ours]["overall"] == official["overall"]
        assert stats[ours]["perAnswerType"] == dict(sorted(official["perAnswerType"].items()))
    assert stats["answer_prior"]["overall"] < stats["question_only"]["overall"]


def test_command_prints_statistics_and_baselines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from ban.commands import synth

    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "s"), "--images", "20", "--feature-dim", "8", "--quiet"])
    assert synth.run(args) == 0
    printed = capsys.readouterr().out
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert "question_only" in printed and "answer_prior" in printed
    assert f"{stats['baselines']['question_only']['overall']:.2f}" in printed
    assert re.search(
        rf"vqa/train\s+{stats['vqa']['train']['images']}\s+{stats['vqa']['train']['questions']}\s", printed
    )
