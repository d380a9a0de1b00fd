"""The files describing a prepared dataset (ban.data.prepared), as every reader of them sees them: damaged or
foreign files give a DataError naming the file and field, never a traceback from json or a KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ban.data.flickr30k import GroundingDataset
from ban.data.npyfile import read_npy
from ban.data.prepared import read_answers, read_manifest, read_tokens
from ban.data.vqa_dataset import VQADataset, load_split_arrays
from ban.engine.tasks import make_task
from ban.errors import DataError

VQA_MANIFEST = {"task": "vqa2", "format_version": 1, "splits": {"train": {"annotated": True}}, "feature_dim": 8,
                "num_answers": 3, "padding_index": 4}


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory / name


@pytest.mark.parametrize(("text", "message", "field"), [
    ('{"task": "vqa2",', "not valid JSON: line 1", None),
    ("[1, 2]", "expected a JSON object, got list", None),
    ('{"task": "grounding", "splits": {}}', "not a vqa2 dataset \\(its task is 'grounding'\\)", "task"),
    ('{"task": "vqa2", "splits": ["train"]}', "expected an object of splits", "splits"),
    ('{"task": "vqa2", "splits": {}, "format_version": 2}', "format version 2, expected 1: written by another "
     "version of ban; rerun `ban prepare`", "format_version"),
    ('{"task": "vqa2", "splits": {}}', "format version None, expected 1", "format_version"),
])
def test_damaged_manifests_are_named_by_every_reader(tmp_path: Path, text: str, message: str,
                                                     field: str | None) -> None:
    path = write(tmp_path, "manifest.json", text)
    for read in (lambda: read_manifest(tmp_path, "vqa2"), lambda: make_task("vqa", tmp_path),
                 lambda: VQADataset(tmp_path, "train")):
        with pytest.raises(DataError, match=message) as caught:
            read()
        assert caught.value.path == str(path) and caught.value.field == field


def test_a_missing_manifest_means_an_unfinished_prepare(tmp_path: Path) -> None:
    for read in (lambda: make_task("grounding", tmp_path), lambda: GroundingDataset(tmp_path, "train")):
        with pytest.raises(DataError, match="not a complete prepared dataset .*run `ban prepare`"):
            read()


def test_a_dataset_folder_that_is_not_there_or_holds_raw_synthetic_scenes_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: no such directory"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "vqa").mkdir()
    (tmp_path / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json").write_text("{}")
    with pytest.raises(DataError, match=f"`ban synth` writes.*`ban prepare vqa2 --root {tmp_path / 'vqa'} --features "
                                        f"{tmp_path / 'features'}/\\*.tsv --out DIR`"):
        read_manifest(tmp_path)
    write(tmp_path, "manifest.json", json.dumps(VQA_MANIFEST))  # a prepared dataset may hold such folders too
    assert read_manifest(tmp_path) == VQA_MANIFEST


def test_a_missing_split_names_the_splits_there_are(tmp_path: Path) -> None:
    write(tmp_path, "manifest.json", json.dumps(VQA_MANIFEST))
    with pytest.raises(DataError, match="no split 'val' \\(it has: train\\)") as caught:
        make_task("vqa", tmp_path).dataset(["val"])
    assert caught.value.field == "splits"


@pytest.mark.parametrize("value", [0, "8", None, True])
def test_model_sizes_are_checked(tmp_path: Path, value: object) -> None:
    write(tmp_path, "manifest.json", json.dumps({**VQA_MANIFEST, "feature_dim": value}))
    write(tmp_path, "dictionary.json", json.dumps({"tokens": ["a", "b", "c", "d"]}))
    write(tmp_path, "answers.json", json.dumps(["yes", "no", "2"]))
    with pytest.raises(DataError, match="expected a positive integer") as caught:
        make_task("vqa", tmp_path).model_sizes()
    assert caught.value.field == "feature_dim"


def test_model_sizes_of_a_sound_dataset(tmp_path: Path) -> None:
    write(tmp_path, "manifest.json", json.dumps(VQA_MANIFEST))
    write(tmp_path, "dictionary.json", json.dumps({"tokens": ["a", "b", "c", "d"]}))
    write(tmp_path, "answers.json", json.dumps(["yes", "no", "2"]))
    assert make_task("vqa", tmp_path).model_sizes() == {"num_tokens": 4, "num_answers": 3, "feature_dim": 8}
    assert read_tokens(tmp_path) == ["a", "b", "c", "d"] and read_answers(tmp_path) == ["yes", "no", "2"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("answers.json", '{"answers": ["yes"]}', "expected a list of answer strings"),
    ("answers.json", '["yes", 2]', "expected a list of answer strings"),
    ("dictionary.json", '{"tokens": "abc"}', "expected a list of strings"),
    ("dictionary.json", "", "not valid JSON"),
])
def test_damaged_vocabularies(tmp_path: Path, name: str, text: str, message: str) -> None:
    write(tmp_path, "manifest.json", json.dumps(VQA_MANIFEST))
    write(tmp_path, "dictionary.json", json.dumps({"tokens": ["a", "b", "c", "d"]}))
    write(tmp_path, "answers.json", json.dumps(["yes", "no", "2"]))
    path = write(tmp_path, name, text)
    with pytest.raises(DataError, match=message) as caught:
        make_task("vqa", tmp_path).model_sizes()
    assert caught.value.path == str(path)


def _npz_bytes(tmp_path: Path) -> bytes:
    np.savez(tmp_path / "made.npz", question_id=np.arange(3))
    return (tmp_path / "made.npz").read_bytes()


@pytest.mark.parametrize(("content", "message"), [
    ("archive", "an .npz archive, not a .npy file: make it again"),
    ("truncated archive", "not a readable .npy file \\(File is not a zip file\\): make it again"),
    ("pickled objects", "not a readable .npy file .*: make it again"),
])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_damaged_npy_file_is_named(tmp_path: Path, content: str, message: str, mmap: bool) -> None:
    """A store's arrays and glove.npy are read by read_npy: an .npz under the name (np.load gave an archive
    object, not an array) or a truncated one (zipfile.BadZipFile) passed as the array or as a traceback."""
    path = tmp_path / "features.npy"
    if content == "pickled objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        data = _npz_bytes(tmp_path)
        path.write_bytes(data if content == "archive" else data[:40])
    with pytest.raises(DataError, match=message) as caught:
        read_npy(path, mmap=mmap, advice=": make it again")
    assert caught.value.path == str(path)


def test_a_truncated_split_archive_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    path.write_bytes(_npz_bytes(tmp_path)[:40])
    with pytest.raises(DataError, match="not a valid prepared split") as caught:
        load_split_arrays(path)
    assert caught.value.path == str(path)
