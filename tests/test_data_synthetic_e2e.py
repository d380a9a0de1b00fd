"""End to end: the synthetic scenes' exported official-format files → `ban prepare vqa2` → batches.

Every expectation is recomputed here from the exported files themselves (parsed with json/csv/base64), not
from our reader.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ban.cli import main
from ban.data.answers import normalize_answer, process_punctuation
from ban.data.collate import collate_vqa
from ban.data.synthetic import generate
from ban.data.vqa2 import VQADataset
from ban.metrics.vqa import score_files

SOFT = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}


def read_tsv(path: Path) -> dict[int, tuple[int, int, np.ndarray, np.ndarray]]:
    csv.field_size_limit(sys.maxsize)
    images = {}
    with open(path, newline="") as file:
        for row in csv.reader(file, delimiter="\t"):
            count = int(row[3])
            boxes = np.frombuffer(base64.b64decode(row[4]), np.float32).reshape(count, 4).copy()
            features = np.frombuffer(base64.b64decode(row[5]), np.float32).reshape(count, -1).copy()
            images[int(row[0])] = (int(row[1]), int(row[2]), boxes, features)
    return images


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=3, num_images=48, feature_dim=64, flickr_images=0, write_images=False, workers=1,
             progress=False)
    return out


@pytest.mark.slow
def test_synthetic_scenes_prepare_end_to_end(synthetic, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    tsvs = sorted(str(p) for p in (synthetic / "features").glob("*.tsv"))
    assert main(["prepare", "vqa2", "--root", str(synthetic / "vqa"), "--features", *tsvs, "--out", str(data),
                 "--min-answer-count", "3", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert set(manifest["splits"]) == {"train", "val", "test-dev"}

    # candidates: normalised multiple-choice answers of ≥ 3 train+val questions
    annotations = {split: json.loads((synthetic / "vqa" / f"v2_mscoco_{split}2014_annotations.json").read_text())
                   ["annotations"] for split in ("train", "val")}
    counts = Counter(normalize_answer(a["multiple_choice_answer"]) for part in annotations.values() for a in part)
    answers = json.loads((data / "answers.json").read_text())
    assert sorted(answers) == sorted(a for a, n in counts.items() if n >= 3)

    images = {}
    for tsv in tsvs:
        images.update(read_tsv(Path(tsv)))
    train = VQADataset(data, "train")
    by_id = {a["question_id"]: a for a in annotations["train"]}
    assert len(train) == len(by_id)
    for index in range(0, len(train), 7):
        item = train[index]
        record = by_id[item["question_id"]]
        width, height, boxes, features = images[record["image_id"]]
        torch.testing.assert_close(item["features"], torch.from_numpy(features))
        np.testing.assert_allclose(item["boxes"][:, 2].numpy(), boxes[:, 2] / width, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(item["boxes"][:, 5].numpy(), (boxes[:, 3] - boxes[:, 1]) / height, rtol=1e-5,
                                   atol=1e-6)
        given = Counter(a["answer"] for a in record["answers"])
        expected = [SOFT.get(given[answer], 1.0) for answer in answers]
        np.testing.assert_allclose(item["target"].numpy(), expected, rtol=1e-6)

    loader = DataLoader(train, batch_size=16, shuffle=True, collate_fn=collate_vqa, num_workers=2)
    seen = 0
    for batch in loader:
        assert batch["features"].shape[2] == 64 and batch["questions"].shape[1] == 14
        assert torch.equal(batch["box_mask"].sum(1), (batch["features"].abs().sum(2) > 0).sum(1))
        seen += len(batch["question_ids"])
    assert seen == len(train)

    # The official evaluation runs from the prepared directory: predicting each question's best soft target.
    val = VQADataset(data, "val")
    results = [{"question_id": val[i]["question_id"], "answer": answers[int(val[i]["target"].argmax())]}
               for i in range(len(val))]
    (tmp_path / "results.json").write_text(json.dumps(results))
    scores = score_files(data / "val_questions.json", data / "val_annotations.json", tmp_path / "results.json")
    # the official rule computed by hand: min(1, matching humans among the other 9 / 3), averaged over the 10
    # leave-one-out subsets; the prediction normalised, the humans' answers only punctuation-processed and only
    # when they disagree, as vqaEval.py does (both normalisations are tested on their own in test_answers)
    predicted = {r["question_id"]: normalize_answer(r["answer"]) for r in results}
    annotations = json.loads((data / "val_annotations.json").read_text())["annotations"]
    by_hand = []
    for record in annotations:
        given = [a["answer"] for a in record["answers"]]
        humans = [process_punctuation(a) for a in given] if len(set(given)) > 1 else given
        by_hand.append(np.mean([min(1.0, sum(other == predicted[record["question_id"]]
                                             for j, other in enumerate(humans) if j != i) / 3)
                                for i in range(len(humans))]))
    assert scores["overall"] == pytest.approx(100 * np.mean(by_hand), abs=0.005)  # the metric rounds to 0.01
    assert scores["overall"] > 50
    test_dev = VQADataset(data, "test-dev")
    assert all(test_dev[i]["target"].sum() == 0 for i in range(len(test_dev)))
