"""Malicious data and checkpoint files: nothing in them is executed, expanded or followed out of the data dir.

Each malicious pickle tries to create a marker file when unpickled; the tests check both the error and that
the marker never appears. A source scan checks that no code path can load a pickle any other way.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import ban
from ban.data.features import FeatureStore
from ban.data.features_tsv import iter_tsv_records
from ban.data.features_writer import write_feature_store
from ban.data.flickr30k import GroundingDataset
from ban.data.flickr30k_parse import parse_annotation_file
from ban.data.flickr30k_prepare import read_split
from ban.data.pickle_map import read_int_dict
from ban.engine.checkpoint import Checkpoint
from ban.errors import CheckpointError, DataError

SOURCE = Path(ban.__file__).parent


class Exploit:
    """Unpickling this runs ``os.system`` (the classic pickle attack)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that execute code, built with every opcode family that can reach a callable; each one does run its
    command under plain ``pickle.loads`` (:func:`test_every_malicious_pickle_runs_its_command_under_plain_pickle`).
    (EXT1-4 and PERSID cannot: they need an extension registered or a ``persistent_load`` in the victim process.)"""
    command = f"touch {marker}".encode()
    return {
        "GLOBAL+REDUCE (protocol 0)": b"cos\nsystem\n(S'" + command + b"'\ntR.",
        "INST": b"(S'" + command + b"'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\nS'" + command + b"'\no.",
        "STACK_GLOBAL+REDUCE (protocol 4)": pickle.dumps(Exploit(marker), protocol=4),
        "inside a dict of ints": pickle.dumps({1: 2, 3: Exploit(marker)}, protocol=2),
        # NEWOBJ makes a SimpleNamespace, BUILD gives it an attribute __setstate__ = os.system, and a second BUILD
        # calls that with the command
        "NEWOBJ+BUILD (__setstate__)": b"\x80\x02ctypes\nSimpleNamespace\n)\x81}X\x0c\x00\x00\x00__setstate__"
                                       b"cos\nsystem\nsbX" + len(command).to_bytes(4, "little") + command + b"b.",
    }


def test_every_malicious_pickle_runs_its_command_under_plain_pickle(tmp_path, monkeypatch):
    """The control of the tests below: each payload does create the marker when unpickled the unsafe way, so that
    a marker's absence there means the loader refused it, not that the payload was a dud."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    payloads = malicious_pickles(marker)
    assert len(payloads) == 6
    for name, data in payloads.items():
        assert not marker.exists()
        pickle.loads(data)  # noqa: S301 - the unsafe load being demonstrated
        assert marker.exists(), name
        marker.unlink()


def test_malicious_image_id_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for name, data in malicious_pickles(marker).items():
        path = tmp_path / "train_imgid2idx.pkl"
        path.write_bytes(data)
        with pytest.raises(DataError, match="train_imgid2idx.pkl"):
            read_int_dict(path)
        assert not marker.exists(), name


def test_malicious_reference_answer_and_dictionary_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for name, data in malicious_pickles(marker).items():
        for read, file_name in ((ban.read_reference_answers, "trainval_label2ans.pkl"),
                                (ban.read_reference_dictionary, "dictionary.pkl")):
            path = tmp_path / file_name
            path.write_bytes(data)
            with pytest.raises(DataError, match=file_name):
                read(path)
            assert not marker.exists(), name


def test_malicious_official_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_epoch12.pth"
    with path.open("wb") as handle:
        torch.save({"epoch": 0, "model_state": {"x": torch.zeros(1)}, "hook": Exploit(marker)}, handle)
    with pytest.raises(CheckpointError, match="model_epoch12.pth"):
        ban.load_official_checkpoint(path)
    assert not marker.exists()


def test_a_pickle_in_place_of_our_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(CheckpointError, match="checkpoint.safetensors"):
        Checkpoint(path)
    assert not marker.exists()


def object_npz(path: Path, marker: Path, **arrays: np.ndarray) -> None:
    """An .npz whose ``image_id`` array is an object array holding an exploit (np.load would unpickle it)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=True)
            archive.writestr(f"{name}.npy", buffer.getvalue())
        buffer = io.BytesIO()
        np.save(buffer, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
        archive.writestr("image_id.npy", buffer.getvalue())


def test_object_arrays_in_prepared_grounding_data_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "manifest.json").write_text('{"task": "grounding", "format_version": 1, "splits": {"train": {}}}')
    arrays = {name: np.zeros((1, 1), dtype=np.int64) for name in (
        "caption_index", "tokens", "entity_positions", "entity_ids", "entity_types", "has_ground_truth",
        "positive_offsets", "positive_boxes")}
    object_npz(tmp_path / "train.npz", marker, **arrays)
    with pytest.raises(DataError, match="train.npz"):
        GroundingDataset(tmp_path, "train")
    assert not marker.exists()


def test_object_arrays_in_prepared_vqa_data_are_refused(tmp_path):
    from ban.data.vqa_dataset import VQADataset

    marker = tmp_path / "pwned"
    (tmp_path / "manifest.json").write_text('{"task": "vqa2", "format_version": 1, "num_answers": 2, '
                                            '"splits": {"train": {"annotated": true}}, "padding_index": 3, '
                                            '"feature_dim": 4}')
    arrays = {name: np.zeros(1, dtype=np.int64) for name in (
        "question_id", "tokens", "target_offsets", "target_labels", "target_scores", "answer_type")}
    object_npz(tmp_path / "train.npz", marker, **arrays)
    with pytest.raises(DataError, match="train.npz"):
        VQADataset(tmp_path, "train")
    assert not marker.exists()


def test_xml_entity_expansion_and_external_entities_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    laughs = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    attacks = {
        "billion laughs": f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "lol">{laughs}]>'
                          "<annotation><size><width>&l9;</width><height>1</height></size></annotation>",
        "quadratic blowup": '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "' + "x" * 50_000 + '">]><annotation>'
                            + "&x;" * 50_000 + "</annotation>",
        "external entity": f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY s SYSTEM "file://{secret}">]>'
                           "<annotation><filename>&s;</filename></annotation>",
        "external DTD": f'<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "file://{secret}"><annotation/>',
        "parameter entity": f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "file://{secret}">%p;]>'
                            "<annotation/>",
    }
    for name, text in attacks.items():
        path = tmp_path / "1000.xml"
        path.write_text(text)
        started = time.perf_counter()
        with pytest.raises(DataError, match="1000.xml") as caught:
            parse_annotation_file(path)
        assert time.perf_counter() - started < 10.0, name  # refused, not expanded (expansion takes minutes)
        assert "TOP SECRET" not in str(caught.value), name


def test_split_lists_hold_image_ids_not_paths(tmp_path):
    path = tmp_path / "train.txt"
    for line in ("../../etc/passwd", "/etc/passwd", "1000/../../x", "1000.xml"):
        path.write_text(f"1000\n{line}\n")
        with pytest.raises(DataError, match="line 2"):
            read_split(path)


def small_store(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    from ban.data.features import FeatureRecord

    records = [FeatureRecord(1, 10, 10, rng.uniform(0, 9, (2, 4)).astype(np.float32),
                             rng.normal(size=(2, 3)).astype(np.float32))]
    write_feature_store(records, directory)
    return directory


@pytest.mark.parametrize("source", ["../outside", "features/../../outside", "sub/../../outside"])
def test_relative_feature_sources_cannot_leave_the_data_dir(tmp_path, source):
    small_store(tmp_path / "outside")
    data_dir = tmp_path / "data"
    (data_dir / "sub").mkdir(parents=True)
    (data_dir / "features.json").write_text(f'{{"sources": ["{source}"]}}')
    with pytest.raises(DataError, match="features.json"):
        FeatureStore.open(data_dir / "features.json")


def test_relative_feature_sources_inside_the_data_dir_are_read(tmp_path):
    data_dir = tmp_path / "data"
    small_store(data_dir / "features")
    (data_dir / "features.json").write_text('{"sources": ["features"]}')
    assert FeatureStore.open(data_dir / "features.json").image_ids.tolist() == [1]


def test_tsv_fields_are_data_not_code(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"__import__('os').system('touch pwned')\t1\t1\t1\tAAAA\tAAAA\n")
    with pytest.raises(DataError, match="image_id"):
        list(iter_tsv_records(path))


# ---- source scan: the only ways a pickle can be read are the two allowed ones ----------------------------------

def calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """Every call in ``tree`` with its dotted name (``torch.load``, ``np.load``, ``eval`` …)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, target = [], node.func
            while isinstance(target, ast.Attribute):
                parts.append(target.attr)
                target = target.value
            if isinstance(target, ast.Name):
                parts.append(target.id)
            found.append((".".join(reversed(parts)), node))
    return found


def keyword(call: ast.Call, name: str) -> object:
    for item in call.keywords:
        if item.arg == name:
            return ast.literal_eval(item.value)
    return None


def test_no_code_path_unpickles_or_executes_data():
    offences = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(SOURCE)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(name in ("pickle", "cPickle", "dill", "marshal", "shelve", "yaml") for name in names):
                    offences.append(f"{where}: imports {names}")
        for name, call in calls(tree):
            if name in ("eval", "exec", "compile", "__import__", "os.system", "os.popen") or \
                    name.startswith("subprocess."):
                offences.append(f"{where}:{call.lineno}: {name}")
            if name.endswith("torch.load") and keyword(call, "weights_only") is not True:
                offences.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if name.endswith(("np.load", "numpy.load")) and keyword(call, "allow_pickle"):
                offences.append(f"{where}:{call.lineno}: np.load with allow_pickle")
            if name.endswith(("ElementTree.parse", "ElementTree.fromstring", "minidom.parse", "sax.parse")) and \
                    not name.startswith(("SafeElementTree", "defusedxml")):
                offences.append(f"{where}:{call.lineno}: XML parsed without defusedxml ({name})")
    assert not offences, offences
