"""Damaged inputs that let a library's own exception escape past the readers (found by an audit of every parser
ban calls): each is now a DataError / CheckpointError naming the file."""

from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np
import pytest
from test_fuzz_features import IMAGES, write_hdf5

from ban.data.features import FeatureStore
from ban.data.features_writer import is_complete_store
from ban.data.flickr30k_parse import parse_annotation_file, parse_caption, parse_sentences_file
from ban.data.flickr30k_prepare import read_split
from ban.data.npyfile import read_npy
from ban.data.pickle_map import read_int_dict
from ban.data.prepare_output import checked_output
from ban.data.vqa_json import load_questions
from ban.errors import CheckpointError, DataError
from ban.viz.boxes import open_or_blank


@pytest.mark.parametrize("content", [b"P6 17 13 0\n", b"P6\n1", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00"])
def test_a_damaged_image_is_named(tmp_path, content):
    """Pillow's decoders raise ValueError (and TypeError, struct.error …) for damaged files of their formats."""
    path = tmp_path / "COCO_val2014_000000000001.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read the image") as caught:
        open_or_blank(path, (8, 8))
    assert caught.value.path == str(path)


def test_text_files_that_are_not_text_or_not_files(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"\xff\xfe1\n")
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_split(tmp_path / "train.txt")
    (tmp_path / "1000.txt").mkdir()
    with pytest.raises(DataError, match="1000.txt: cannot read"):
        parse_sentences_file(tmp_path / "1000.txt")
    (tmp_path / "1000.xml").mkdir()
    with pytest.raises(DataError, match="1000.xml: cannot read"):
        parse_annotation_file(tmp_path / "1000.xml")


@pytest.mark.parametrize("encoding", ["x-nope", "big5"])
def test_an_xml_encoding_expat_cannot_read_is_named(tmp_path, encoding):
    path = tmp_path / "1000.xml"
    path.write_text(f'<?xml version="1.0" encoding="{encoding}"?><annotation/>')
    with pytest.raises(DataError, match="1000.xml: unsupported XML encoding"):
        parse_annotation_file(path)


def test_ids_beyond_64_bits_are_refused_where_they_are_read(tmp_path):
    with pytest.raises(DataError, match="entity id of 19 digits") as caught:
        parse_caption("[/EN#" + "9" * 19 + "/people A man] walks .")
    assert caught.value.field == "entity_id"
    path = tmp_path / "questions.json"
    path.write_text(json.dumps({"questions": [{"question_id": 2**64, "image_id": 1, "question": "Why?"}]}))
    with pytest.raises(DataError, match="outside the 64-bit range") as caught:
        load_questions(path)
    assert caught.value.field == "question_id"
    (tmp_path / "map.pkl").write_bytes(pickle.dumps({2**70: 0}))
    with pytest.raises(DataError, match="map.pkl: record byte 13: an integer outside the 64-bit range"):
        read_int_dict(tmp_path / "map.pkl")
    (tmp_path / "dir.pkl").mkdir()
    with pytest.raises(DataError, match="dir.pkl: cannot read"):
        read_int_dict(tmp_path / "dir.pkl")


def test_a_header_declaring_more_than_memory_holds(tmp_path):
    """np.load (not memory-mapped) of an .npy header claiming 10^12 float64 values: a MemoryError escaped."""
    path = tmp_path / "image_ids.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
        handle.write(bytes(64))
    with pytest.raises(DataError, match="image_ids.npy: not a readable .npy file"):
        read_npy(path)


def test_an_hdf5_index_declaring_more_than_memory_holds(tmp_path):
    """A chunked, never written pos_boxes of 10^12 rows: reading it raised MemoryError."""
    path = tmp_path / "val.hdf5"
    write_hdf5(path, IMAGES, adaptive=True)
    with h5py.File(path, "a") as file:
        del file["pos_boxes"]
        file.create_dataset("pos_boxes", shape=(10**12, 2), dtype="i8", chunks=(1024, 2))
    with pytest.raises(DataError, match="val.hdf5: cannot read as HDF5"):
        FeatureStore.open(path)


def test_a_damaged_store_json_means_convert_again(tmp_path):
    (tmp_path / "store.json").write_bytes(b"\xff{")
    assert not is_complete_store(tmp_path, [])
    (tmp_path / "store.json").unlink()
    (tmp_path / "store.json").mkdir()
    assert not is_complete_store(tmp_path, [])


def test_a_symlink_loop_as_out_or_input_is_named(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match="cannot resolve") as caught:
        checked_output(loop, "vqa2", {})
    assert caught.value.field == "out"
    with pytest.raises(DataError, match="cannot resolve") as caught:
        checked_output(tmp_path / "out", "vqa2", {"glove": [loop]})
    assert caught.value.field == "glove"


def test_resuming_from_a_checkpoint_without_a_position_is_named(tmp_path):
    """start_run checked the epochs against checkpoint.state["epoch"] before anything validated it: KeyError."""
    import torch

    from ban.engine.checkpoint import save_checkpoint
    from ban.engine.config import TrainConfig
    from ban.engine.run import CHECKPOINT_FILE, RunConfig, start_run
    from ban.models import preset

    model = preset("tiny", num_tokens=10, num_answers=4, feature_dim=8, hidden_dim=8, word_dim=4)
    run = RunConfig("vqa", str(tmp_path / "data"), model, TrainConfig(epochs=2), {})
    start_run(tmp_path / "run", run, resume=False)
    for state in ({}, {"epoch": "1", "step": 0, "history": [], "partial": {}}):
        save_checkpoint(tmp_path / "run" / CHECKPOINT_FILE, torch.nn.Linear(2, 2), None, state)
        with pytest.raises(CheckpointError, match="malformed training position"):
            start_run(tmp_path / "run", run, resume=True)


def test_a_checkpoint_whose_history_does_not_fit_its_epoch_is_named(tmp_path):
    """read_position wants one metrics record per finished epoch: epoch 2 with one record is a malformed position,
    refused with the checkpoint's path and field, not resumed with a history an epoch short."""
    import torch

    from ban.engine.checkpoint import HISTORY_NUMBERS, save_checkpoint
    from ban.engine.config import TrainConfig
    from ban.engine.run import CHECKPOINT_FILE, RunConfig, start_run
    from ban.models import preset

    model = preset("tiny", num_tokens=10, num_answers=4, feature_dim=8, hidden_dim=8, word_dim=4)
    run = RunConfig("vqa", str(tmp_path / "data"), model, TrainConfig(epochs=3), {})
    start_run(tmp_path / "run", run, resume=False)
    path = tmp_path / "run" / CHECKPOINT_FILE
    record = dict.fromkeys(HISTORY_NUMBERS, 1)
    save_checkpoint(path, torch.nn.Linear(2, 2), None, {"epoch": 2, "step": 0, "history": [record], "partial": {}})
    with pytest.raises(CheckpointError, match="malformed training position: .*one metrics record per finished "
                                              "epoch") as caught:
        start_run(tmp_path / "run", run, resume=True)
    assert (caught.value.path, caught.value.field) == (str(path), "state")
    save_checkpoint(path, torch.nn.Linear(2, 2), None, {"epoch": 2, "step": 0, "history": [record] * 2, "partial": {}})
    assert start_run(tmp_path / "run", run, resume=True)["history"] == [record] * 2  # with its two records it resumes


def test_a_missing_glove_file_is_named_before_any_work(tmp_path):
    """It was opened only after the features were converted: FileNotFoundError / IsADirectoryError then."""
    from ban.data.vqa2 import prepare_vqa2

    features = tmp_path / "features.tsv"
    features.write_text("")
    (tmp_path / "glove_dir").mkdir()
    for glove in (tmp_path / "none.txt", tmp_path / "glove_dir"):
        with pytest.raises(DataError, match="GloVe file not found") as caught:
            prepare_vqa2(tmp_path / "vqa", [features], tmp_path / "out", glove=glove, progress=False)
        assert caught.value.field == "glove" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["float8", "sparse", "meta", "empty"])
def test_authors_checkpoint_tensors_of_a_kind_ban_cannot_read_are_named(official_fixtures, damage):
    """float8 / sparse tensors raised NotImplementedError from isfinite, a meta tensor RuntimeError, an empty
    GRU weight ZeroDivisionError while the sizes were inferred."""
    import torch

    import ban

    state = dict(torch.load(official_fixtures / "ban_vqa_g4_h32_c.pth", weights_only=True)["model_state"])
    key = "module.q_emb.rnn.weight_hh_l0" if damage == "empty" else "module.classifier.main.3.weight_v"
    value = state[key]
    state[key] = {"float8": lambda: value.to(torch.float8_e4m3fn), "sparse": lambda: value.to_sparse(),
                  "meta": lambda: value.to("meta"), "empty": lambda: torch.zeros(0, 0)}[damage]()
    with pytest.raises(CheckpointError) as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field == key.removeprefix("module.")


def test_our_checkpoint_with_float8_values_is_named(tmp_path):
    import torch

    from ban.engine.checkpoint import Checkpoint, save_checkpoint

    module = torch.nn.Linear(2, 2)
    module.register_buffer("extra", torch.zeros(3, dtype=torch.float8_e4m3fn))
    save_checkpoint(tmp_path / "checkpoint.safetensors", module, None, {})
    with pytest.raises(CheckpointError, match="float8_e4m3fn, which ban never writes") as caught:
        Checkpoint(tmp_path / "checkpoint.safetensors").load_model(torch.nn.Linear(2, 2))
    assert caught.value.field == "extra"


def test_a_questions_entry_that_is_not_a_file_is_named(tmp_path):
    from ban.data.vqa2 import available_splits, questions_path

    questions_path(tmp_path, "val").mkdir(parents=True)
    with pytest.raises(DataError, match="not a file"):
        available_splits(tmp_path)


def test_a_features_json_source_that_loops_is_named(tmp_path):
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    (tmp_path / "features.json").write_text(json.dumps({"sources": ["loop"]}))
    with pytest.raises(DataError, match="cannot resolve") as caught:
        FeatureStore.open(tmp_path / "features.json")
    assert caught.value.field == "sources"
