"""The files of a prepared dataset must belong together: a manifest whose sizes disagree with answers.json,
dictionary.json or the feature store, a split naming an image the store lacks or a question twice, or answers.json
listing an answer twice, is a DataError naming the file, the record and the field when the split is opened — not a
traceback from inside the model or the loss mid-training."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ban.data.distinct import repeated_positions
from ban.data.flickr30k_prepare import prepare_flickr30k
from ban.data.prepared import read_answers
from ban.data.synthetic import generate
from ban.data.vqa2 import prepare_vqa2
from ban.engine.tasks import make_task
from ban.errors import DataError

NAMES = ("vqa", "grounding")  # the prepared datasets of the fixture: each folder is named after its task


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a sound prepared VQA dataset (``vqa``) and grounding dataset (``grounding``), 16-d
    features, made from 24 + 10 synthetic images."""
    root = tmp_path_factory.mktemp("consistency")
    raw = root / "raw"
    generate(raw, seed=3, num_images=24, feature_dim=16, flickr_images=10, write_images=False, workers=1,
             progress=False)
    prepare_vqa2(raw / "vqa", sorted((raw / "features").glob("*.tsv")), root / "vqa", min_answer_count=1,
                 progress=False)
    prepare_flickr30k(raw / "flickr30k", [raw / "flickr30k" / "features.tsv"], root / "grounding", progress=False)
    return root


def copy_of(prepared: Path, name: str, tmp_path: Path) -> Path:
    """A copy of the prepared dataset ``name`` ("vqa" or "grounding") to damage."""
    return Path(shutil.copytree(prepared / name, tmp_path / name))


def edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def set_in_split(path: Path, name: str, row: int, value: int) -> None:
    """Set row ``row`` of the array ``name`` of the split file ``path`` to ``value``."""
    arrays = dict(np.load(path))
    arrays[name][row] = value
    np.savez(path, **arrays)


def open_splits(data_dir: Path) -> None:
    """What a training run does first: the model's sizes, then every split of the dataset."""
    task = make_task(data_dir.name, data_dir)
    task.model_sizes()
    task.dataset(task.splits())


def test_sound_datasets_open(prepared: Path) -> None:
    """The sound datasets open (the baseline of every damage below) with the sizes their manifests record."""
    for name in NAMES:
        open_splits(prepared / name)
        task = make_task(name, prepared / name)
        manifest = json.loads((prepared / name / "manifest.json").read_text())
        assert task.model_sizes()["feature_dim"] == manifest["feature_dim"] == 16
        assert task.model_sizes()["num_tokens"] == manifest["num_tokens"] > 0
        samples = "questions" if name == "vqa" else "sentences"
        lengths = {split: len(task.dataset([split])) for split in task.splits()}
        assert lengths == {split: manifest["splits"][split][samples] for split in task.splits()}
        assert all(lengths.values())


@pytest.mark.parametrize("name", NAMES)
def test_a_dataset_whose_store_is_not_listed_opens_it_from_features(prepared: Path, tmp_path: Path,
                                                                    name: str) -> None:
    """Earlier versions kept the converted store in features/ with no features.json beside it: both tasks open it
    alike (the VQA task once refused it)."""
    data_dir = copy_of(prepared, name, tmp_path)
    (data_dir / "features.json").unlink()
    earlier, now = (make_task(name, path).dataset(["val"]) for path in (data_dir, prepared / name))
    assert np.array_equal(earlier[0]["features"], now[0]["features"]) and len(earlier) == len(now)


@pytest.mark.parametrize("name", NAMES)
def test_a_manifest_feature_width_other_than_the_stores(prepared: Path, tmp_path: Path, name: str) -> None:
    data_dir = copy_of(prepared, name, tmp_path)
    edit_json(data_dir / "manifest.json", lambda manifest: {**manifest, "feature_dim": 32})
    with pytest.raises(DataError, match="32, but the feature store .*features holds 16-d features") as caught:
        open_splits(data_dir)
    assert (caught.value.path, caught.value.record, caught.value.field) == (
        str(data_dir / "manifest.json"), None, "feature_dim")


@pytest.mark.parametrize("name", NAMES)
def test_a_dictionary_shorter_than_the_manifest_says(prepared: Path, tmp_path: Path, name: str) -> None:
    """The model's vocabulary is dictionary.json's; the split's token ids were checked against the manifest's
    padding index, one past it: the model refused the padding id mid-training."""
    data_dir = copy_of(prepared, name, tmp_path)
    edit_json(data_dir / "dictionary.json", lambda dictionary: {"tokens": dictionary["tokens"][:-1]})
    count = json.loads((data_dir / "manifest.json").read_text())["padding_index"] - 1
    with pytest.raises(DataError, match=f"but dictionary.json has {count} tokens") as caught:
        open_splits(data_dir)
    assert (caught.value.path, caught.value.record, caught.value.field) == (
        str(data_dir / "manifest.json"), None, "padding_index")


@pytest.mark.parametrize("damage", [
    lambda data_dir: edit_json(data_dir / "manifest.json", lambda m: {**m, "num_answers": m["num_answers"] + 1}),
    lambda data_dir: edit_json(data_dir / "manifest.json", lambda m: {**m, "num_answers": m["num_answers"] - 1}),
    lambda data_dir: edit_json(data_dir / "answers.json", lambda answers: answers[:-1]),
], ids=["manifest one more", "manifest one fewer (was blamed on train.npz's labels)", "answers.json one fewer"])
def test_a_manifest_answer_count_other_than_answers_json(prepared: Path, tmp_path: Path,
                                                         damage: Callable[[Path], None]) -> None:
    """The model's classifier has a row per answer of answers.json, the targets one per the manifest's count: they
    met in the loss ("Target size must be the same as input size")."""
    data_dir = copy_of(prepared, "vqa", tmp_path)
    damage(data_dir)
    with pytest.raises(DataError, match="but answers.json lists") as caught:
        open_splits(data_dir)
    assert (caught.value.path, caught.value.record, caught.value.field) == (
        str(data_dir / "manifest.json"), None, "num_answers")


@pytest.mark.parametrize("name", NAMES)
def test_a_split_naming_an_image_the_store_lacks(prepared: Path, tmp_path: Path, name: str) -> None:
    """Once a KeyError from the feature store, at the first batch holding the sample."""
    data_dir = copy_of(prepared, name, tmp_path)
    set_in_split(data_dir / "val.npz", "image_id", 0, 999999)
    record = f"question_id={np.load(data_dir / 'val.npz')['question_id'][0]}" if name == "vqa" else "sentence 0"
    with pytest.raises(DataError, match="image 999999 has no features in the feature store") as caught:
        open_splits(data_dir)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(data_dir / "val.npz"), record,
                                                                            "image_id")


def test_a_question_twice_in_a_split(prepared: Path, tmp_path: Path) -> None:
    data_dir = copy_of(prepared, "vqa", tmp_path)
    question_id = int(np.load(data_dir / "val.npz")["question_id"][1])
    set_in_split(data_dir / "val.npz", "question_id", 2, question_id)
    with pytest.raises(DataError, match="question listed twice \\(rows 1 and 2\\)") as caught:
        open_splits(data_dir)
    assert (caught.value.path, caught.value.record, caught.value.field) == (
        str(data_dir / "val.npz"), f"question_id={question_id}", "question_id")


def test_an_answer_twice_in_answers_json(prepared: Path, tmp_path: Path) -> None:
    """Two labels for one answer: the model would split its score between them, and scoring would read back
    whichever label wins."""
    data_dir = copy_of(prepared, "vqa", tmp_path)
    answers = read_answers(data_dir)
    edit_json(data_dir / "answers.json", lambda _: [*answers[:-1], answers[1]])  # the same count: the manifest fits
    message = re.escape(f"answer {answers[1]!r} is listed twice (also entry 1)")
    for read in (lambda: read_answers(data_dir), lambda: open_splits(data_dir)):
        with pytest.raises(DataError, match=message) as caught:
            read()
        assert (caught.value.path, caught.value.record, caught.value.field) == (
            str(data_dir / "answers.json"), f"entry {len(answers) - 1}", None)


def test_repeated_positions() -> None:
    assert repeated_positions(np.array([5, 3, 9, 3, 5, 3])).tolist() == [1, 3, 5]  # the smallest repeated value
    assert repeated_positions(np.array(["b", "a", "b"], dtype=object)).tolist() == [0, 2]
    assert repeated_positions(np.array([4, 2, 7])).tolist() == []
    assert repeated_positions(np.zeros(0, dtype=np.int64)).tolist() == []


@pytest.mark.parametrize("name", NAMES)
def test_a_token_id_beyond_the_padding_index(prepared: Path, tmp_path: Path, name: str) -> None:
    """Grounding splits' token ids were not checked at all (VQA's were): the word table's look-up failed."""
    data_dir = copy_of(prepared, name, tmp_path)
    padding = json.loads((data_dir / "manifest.json").read_text())["padding_index"]
    set_in_split(data_dir / "val.npz", "tokens", 0, padding + 1)
    with pytest.raises(DataError, match=rf"token indices outside \[0, {padding}\]") as caught:
        open_splits(data_dir)
    assert (caught.value.path, caught.value.field) == (str(data_dir / "val.npz"), "tokens")
