"""Feature stores: TSV files in the official bottom-up format, our store, the authors' HDF5 cache, pickles."""

from __future__ import annotations

import base64
import csv
import gzip
import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from ban.data.atomic import atomic_path
from ban.data.features import FeatureRecord, FeatureStore, UnionFeatureStore
from ban.data.features_listing import write_sources_file
from ban.data.features_tsv import iter_tsv_files, iter_tsv_image_ids, iter_tsv_records
from ban.data.features_writer import write_feature_store
from ban.data.pickle_map import read_int_dict
from ban.errors import DataError

TSV_FIELDNAMES = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]


def random_image(rng: np.random.Generator, image_id: int, num_boxes: int, dim: int) -> dict:
    """One image's detections: pixel boxes inside a random image size, random features."""
    width, height = int(rng.integers(200, 800)), int(rng.integers(200, 800))
    x1 = rng.uniform(0, width - 20, num_boxes)
    y1 = rng.uniform(0, height - 20, num_boxes)
    x2 = x1 + rng.uniform(1, width - x1)
    y2 = y1 + rng.uniform(1, height - y1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    features = rng.standard_normal((num_boxes, dim)).astype(np.float32)
    return {"image_id": image_id, "image_w": width, "image_h": height, "boxes": boxes, "features": features}


def write_official_tsv(path: Path, images: list[dict]) -> None:
    """Write images the way the bottom-up-attention generator does: csv.DictWriter, tab-delimited, default
    ``\\r\\n`` line ends, arrays as base64 of float32 bytes."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, delimiter="\t", fieldnames=TSV_FIELDNAMES)
        for image in images:
            writer.writerow({
                "image_id": image["image_id"], "image_w": image["image_w"], "image_h": image["image_h"],
                "num_boxes": len(image["boxes"]),
                "boxes": base64.b64encode(image["boxes"].tobytes()).decode("ascii"),
                "features": base64.b64encode(image["features"].tobytes()).decode("ascii"),
            })


def expected_spatial(image: dict) -> np.ndarray:
    """x1/w, y1/h, x2/w, y2/h, bw/w, bh/h computed directly in float64."""
    boxes = image["boxes"].astype(np.float64)
    w, h = image["image_w"], image["image_h"]
    return np.stack([boxes[:, 0] / w, boxes[:, 1] / h, boxes[:, 2] / w, boxes[:, 3] / h,
                     (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], axis=1)


@pytest.fixture()
def images() -> list[dict]:
    rng = np.random.default_rng(7)
    return [random_image(rng, image_id, count, 16) for image_id, count in [(42, 10), (7, 36), (123456, 1), (9, 100)]]


def test_tsv_records_round_trip(tmp_path, images) -> None:
    path = tmp_path / "features.tsv"
    write_official_tsv(path, images)
    records = list(iter_tsv_records(path))
    assert [r.image_id for r in records] == [42, 7, 123456, 9]
    for record, image in zip(records, images, strict=True):
        assert (record.image_w, record.image_h) == (image["image_w"], image["image_h"])
        np.testing.assert_array_equal(record.boxes, image["boxes"])
        np.testing.assert_array_equal(record.features, image["features"])
        assert record.features.dtype == np.float32 and record.num_boxes == len(image["boxes"])


def test_store_round_trip_and_spatial_features(tmp_path, images) -> None:
    path = tmp_path / "features.tsv"
    write_official_tsv(path, images)
    summary = write_feature_store(iter_tsv_files([path], progress=False), tmp_path / "store")
    assert (summary.num_images, summary.num_boxes, summary.feature_dim) == (4, 147, 16)
    store = FeatureStore.open(tmp_path / "store")
    assert store.image_ids.tolist() == [42, 7, 123456, 9]
    assert store.feature_dim == 16 and len(store) == 4
    assert 7 in store and 8 not in store
    for image in images:
        features, spatial, boxes = store.get(image["image_id"])
        np.testing.assert_array_equal(features, image["features"])
        np.testing.assert_array_equal(boxes, image["boxes"])
        np.testing.assert_allclose(spatial, expected_spatial(image), rtol=1e-6, atol=1e-6)
        assert spatial.dtype == np.float32 and store.num_boxes(image["image_id"]) == len(image["boxes"])
    with pytest.raises(KeyError, match="8"):
        store.get(8)


def test_spatial_features_hand_computed(tmp_path) -> None:
    image = {"image_id": 1, "image_w": 640, "image_h": 480, "boxes": np.array([[64, 48, 320, 480]], np.float32),
             "features": np.ones((1, 2), np.float32)}
    write_feature_store([FeatureRecord(1, 640, 480, image["boxes"], image["features"])], tmp_path / "s")
    _, spatial, _ = FeatureStore.open(tmp_path / "s").get(1)
    np.testing.assert_allclose(spatial[0], [0.1, 0.1, 0.5, 1.0, 0.4, 0.9], rtol=1e-6)


def test_store_is_memory_mapped_and_picklable(tmp_path, images) -> None:
    write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store")
    store = FeatureStore.open(tmp_path / "store")
    store.get(42)
    assert isinstance(store._arrays["features"], np.memmap)
    clone = pickle.loads(pickle.dumps(store))  # what a DataLoader worker receives
    assert clone._arrays is None
    np.testing.assert_array_equal(clone.get(9)[0], images[3]["features"])


def test_float16_store(tmp_path, images) -> None:
    write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store", dtype="float16")
    store = FeatureStore.open(tmp_path / "store")
    features, _, _ = store.get(7)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, images[1]["features"], rtol=1e-3, atol=1e-3)
    assert np.load(tmp_path / "store" / "features.npy", mmap_mode="r").dtype == np.float16


def _tsv_line(fields: list[str]) -> str:
    return "\t".join(fields) + "\r\n"


def _good_fields(image: dict) -> list[str]:
    return [str(image["image_id"]), str(image["image_w"]), str(image["image_h"]), str(len(image["boxes"])),
            base64.b64encode(image["boxes"].tobytes()).decode(), base64.b64encode(image["features"].tobytes()).decode()]


def _base64(values) -> str:
    return base64.b64encode(np.asarray(values, np.float32).tobytes()).decode()


def _float64_base64(field: str) -> str:
    """A base64 float32 field rewritten as float64 (as a converter that forgot the dtype writes it)."""
    return base64.b64encode(np.frombuffer(base64.b64decode(field), np.float32).astype(np.float64).tobytes()).decode()


def _boxes_with(index: int, box: list[float]) -> np.ndarray:
    """Ten valid pixel boxes, box ``index`` replaced by ``box``."""
    boxes = np.tile(np.array([[1, 2, 30, 40]], np.float32), (10, 1))
    boxes[index] = box
    return boxes


def test_image_sizes_written_as_whole_floats_are_read(tmp_path, images) -> None:
    """The reference reads image_w / image_h as floats; some extractors write "640.0"."""
    fields = _good_fields(images[0])
    width, height = int(fields[1]), int(fields[2])
    fields[1], fields[2] = f"{width}.0", f"{height}.000"
    path = tmp_path / "float_sizes.tsv"
    path.write_text(_tsv_line(fields), newline="")
    (record,) = iter_tsv_records(path)
    assert (record.image_w, record.image_h) == (width, height)


def test_image_ids_are_read_without_decoding_the_arrays(tmp_path, images) -> None:
    path = tmp_path / "two.tsv"
    path.write_text(_tsv_line(_good_fields(images[0])) + "\r\n" + _tsv_line(_good_fields(images[1])), newline="")
    expected = [record.image_id for record in iter_tsv_records(path)]
    assert list(iter_tsv_image_ids(path)) == [(1, expected[0]), (3, expected[1])]  # line 2 is empty
    path.write_text("abc\t1\t2\t3\tAAAA\tAAAA\n", newline="")
    with pytest.raises(DataError, match="not an integer: 'abc'") as error:
        list(iter_tsv_image_ids(path))
    assert (error.value.field, error.value.record) == ("image_id", "line 1")
    path.write_text("7\t640\t48", newline="")  # a download cut short
    with pytest.raises(DataError, match="expected 6 tab-separated fields .*, got 3") as error:
        list(iter_tsv_image_ids(path))
    assert error.value.record == "line 1"


@pytest.mark.parametrize("seed", range(6))
def test_the_image_id_pass_agrees_with_reading_every_line(tmp_path, seed) -> None:
    """The pass jumps over lines by their computed length: on files with both line ends, blank lines, box counts
    up to 250 (the boxes outgrow its 4 KB probe), records of another width (here their wrong jumps land
    mid-line and are caught; one that lands on a later line end: test_feature_sources.py), a damaged num_boxes
    and a last line without its line end, it finds exactly the ids a line-by-line reading finds."""
    rng = np.random.default_rng(seed)
    line_end = [b"\r\n", b"\n"][seed % 2]
    lines = []
    for image_id in rng.choice(10**9, size=40, replace=False).tolist():
        boxes = int(rng.choice([1, 2, 3, 36, 100, 250]))
        width = 8 if rng.random() > 0.05 else 5  # now and then a record of another width
        fields = [str(image_id).encode(), b"640", b"480", str(boxes).encode(),
                  base64.b64encode(rng.random((boxes, 4), dtype=np.float32).tobytes()),
                  base64.b64encode(rng.random((boxes, width), dtype=np.float32).tobytes())]
        if rng.random() < 0.05:
            fields[3] = b"many"
        lines.append(b"\t".join(fields))
        if rng.random() < 0.1:
            lines.append(b"")
    data = line_end.join(lines) + (line_end if seed % 3 else b"")
    path = tmp_path / "random.tsv"
    path.write_bytes(data)
    expected = [(number, int(line.split(b"\t")[0])) for number, line in enumerate(data.split(b"\n"), start=1)
                if line.rstrip(b"\r")]
    passed: list[int] = []
    assert list(iter_tsv_image_ids(path, on_progress=passed.append)) == expected
    assert sum(passed) == len(data)


def test_a_compressed_tsv_file_is_named_as_such(tmp_path, images) -> None:
    line = _tsv_line(_good_fields(images[0])).encode()
    (tmp_path / "trainval.tsv.gz").write_bytes(gzip.compress(line))
    with zipfile.ZipFile(tmp_path / "trainval.zip", "w") as archive:
        archive.writestr("trainval.tsv", line)
    for name, message in (("trainval.tsv.gz", "gzip-compressed file: decompress it first"),
                          ("trainval.zip", "a zip archive: extract its TSV files first")):
        for read in (iter_tsv_records, iter_tsv_image_ids):
            with pytest.raises(DataError, match=message) as error:
                list(read(tmp_path / name))
            assert error.value.path == str(tmp_path / name)


def test_a_file_cut_short_is_named_by_the_image_id_pass(tmp_path, images) -> None:
    """A download interrupted inside the last record's features: found before the conversion of all else."""
    data = (_tsv_line(_good_fields(images[0])) + _tsv_line(_good_fields(images[1]))).encode()
    path = tmp_path / "cut.tsv"
    path.write_bytes(data[:-40])
    with pytest.raises(DataError, match="is the file cut short .an interrupted download.") as error:
        list(iter_tsv_image_ids(path))
    assert error.value.record == "line 2"
    path.write_bytes(data.rstrip(b"\r\n"))  # whole, only the last line end missing
    assert [image_id for _, image_id in iter_tsv_image_ids(path)] == [images[0]["image_id"], images[1]["image_id"]]


def test_an_image_id_longer_than_any_probe_is_read_whole(tmp_path, images) -> None:
    fields = _good_fields(images[0])
    fields[0] = "0" * 70 + "1"
    path = tmp_path / "long_id.tsv"
    path.write_text(_tsv_line(fields) + _tsv_line(_good_fields(images[1])), newline="")
    assert [image_id for _, image_id in iter_tsv_image_ids(path)] == [1, images[1]["image_id"]]
    assert [record.image_id for record in iter_tsv_records(path)] == [1, images[1]["image_id"]]


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda f: f.__setitem__(4, f[4][:-8] + "!!!!!!!!"), "boxes", "bad base64"),
        (lambda f: f.__setitem__(5, f[5][:10] + "*" + f[5][11:]), "features", "bad base64"),
        (lambda f: f.__setitem__(3, "11"), "boxes", "expected num_boxes × 4 = 44"),
        (lambda f: f.__setitem__(5, base64.b64encode(np.zeros(10 * 16 + 3, np.float32).tobytes()).decode()),
         "features", "not a multiple of num_boxes"),
        (lambda f: f.__setitem__(5, base64.b64encode(np.zeros(10 * 8, np.float32).tobytes()).decode()),
         "features", "feature width 8"),
        (lambda f: f.__setitem__(0, "abc"), "image_id", "not an integer: 'abc'"),
        (lambda f: f.__setitem__(1, "640.5"), "image_w", "not a whole number of pixels: '640.5'"),
        (lambda f: f.__setitem__(2, "nan"), "image_h", "not a whole number of pixels: 'nan'"),
        (lambda f: f.__setitem__(2, "wide"), "image_h", "not a number: 'wide'"),
        (lambda f: f.__setitem__(3, "0"), "num_boxes", "must be positive"),
        (lambda f: f.__setitem__(2, "0"), "image_h", "must be positive"),
        (lambda f: f.__setitem__(4, base64.b64encode(b"\x00\x00\x00").decode()), "boxes", "whole number"),
        (lambda f: f.__setitem__(5, base64.b64encode(np.r_[np.zeros(10 * 16 - 1), np.nan].astype(np.float32)
                                                     .tobytes()).decode()), "features", "value 159 is nan"),
        (lambda f: f.__setitem__(0, "99999999999999999999999"), "image_id", "does not fit a 64-bit integer"),
        (lambda f: f.__setitem__(1, "99999999999999999999999"), "image_w", "does not fit a 64-bit integer"),
        (lambda f: f.__setitem__(5, _base64(np.r_[np.zeros(10 * 16 - 2), 3e38, 1.0])), "features",
         "value 158 is 3e\\+38: larger than 65504"),
        (lambda f: f.__setitem__(4, _base64(_boxes_with(3, [50, 50, 10, 60]))), "boxes", "box 3 .* x2 < x1"),
        (lambda f: f.__setitem__(4, _base64(_boxes_with(0, [1, 50, 30, 40]))), "boxes", "box 0 .* y2 < y1"),
        (lambda f: f.__setitem__(4, _float64_base64(f[4])), "boxes",  # float64 values: the count, not "3.7e+19"
         r"holds 80 floats, expected num_boxes × 4 = 40; twice as many: float64 values\? the format is float32"),
        (lambda f: f.__setitem__(5, _float64_base64(f[5])), "features",
         r"feature width 32 .* expected 16, the width of the first record \(\S*bad.tsv: line 1, image_id=7\); "
         r"twice as many: float64 values\?"),
    ],
)
def test_bad_tsv_rows_name_file_line_and_field(tmp_path, images, mutate, field, message) -> None:
    fields = _good_fields(images[0])
    mutate(fields)
    path = tmp_path / "bad.tsv"
    path.write_text(_tsv_line(_good_fields(images[1])) + _tsv_line(fields), newline="")
    with pytest.raises(DataError, match=message) as error:
        list(iter_tsv_records(path))
    assert error.value.path == str(path)
    assert error.value.field == field
    assert str(error.value.record).startswith("line 2")


def test_wrong_field_count(tmp_path, images) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(_tsv_line(_good_fields(images[0])[:5]), newline="")
    with pytest.raises(DataError, match="expected 6 tab-separated fields") as error:
        list(iter_tsv_records(path))
    assert error.value.record == "line 1"


def test_feature_width_enforced_across_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    write_official_tsv(tmp_path / "a.tsv", [random_image(rng, 1, 3, 16)])
    write_official_tsv(tmp_path / "b.tsv", [random_image(rng, 2, 3, 8)])
    with pytest.raises(DataError, match="feature width 8") as error:
        list(iter_tsv_files([tmp_path / "a.tsv", tmp_path / "b.tsv"], progress=False))
    assert error.value.path == str(tmp_path / "b.tsv") and error.value.field == "features"


def test_repeated_image_is_an_error_and_leaves_nothing(tmp_path, images) -> None:
    write_official_tsv(tmp_path / "a.tsv", images[:2])
    write_official_tsv(tmp_path / "b.tsv", images[1:2])
    with pytest.raises(DataError, match="image appears twice") as error:
        write_feature_store(iter_tsv_files([tmp_path / "a.tsv", tmp_path / "b.tsv"], progress=False),
                            tmp_path / "store")
    assert error.value.path == str(tmp_path / "b.tsv") and error.value.field == "image_id"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv", "b.tsv"]


def test_interrupted_write_keeps_the_previous_store(tmp_path, images) -> None:
    write_feature_store((FeatureRecord(**image) for image in images[:1]), tmp_path / "store")

    def interrupted():
        yield FeatureRecord(**images[1])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_feature_store(interrupted(), tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert FeatureStore.open(tmp_path / "store").image_ids.tolist() == [42]
    write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store")  # replaced
    assert FeatureStore.open(tmp_path / "store").image_ids.tolist() == [42, 7, 123456, 9]


def test_an_interrupt_between_the_two_renames_puts_the_previous_store_back(tmp_path, images, monkeypatch) -> None:
    """The swap moves the previous store aside, then the new one in: a Ctrl-C in between (fault injected into the
    rename onto the store's name, after the previous store went aside) moves the previous one back; one left aside
    by a killed process is moved back by the next run, not deleted."""
    write_feature_store((FeatureRecord(**image) for image in images[:1]), tmp_path / "store")
    replace, moves = os.replace, []

    def interrupted_replace(source, target):
        moves.append(Path(target).name)
        if moves[-1] == "store" and len(moves) > 1 and moves[-2].startswith(".store.old-"):  # right after aside
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert FeatureStore.open(tmp_path / "store").image_ids.tolist() == [42]

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    aside = tmp_path / f".store.old-{int(finished.stdout)}"  # as a process killed between the renames leaves it
    os.replace(tmp_path / "store", aside)
    with pytest.raises(DataError), atomic_path(tmp_path / "store"):
        raise DataError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert FeatureStore.open(tmp_path / "store").image_ids.tolist() == [42]


def test_store_without_store_json_is_incomplete(tmp_path, images) -> None:
    write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store")
    (tmp_path / "store" / "store.json").unlink()
    with pytest.raises(DataError, match="no store.json"):
        FeatureStore.open(tmp_path / "store")


def _write_authors_hdf5(path: Path, images: list[dict], adaptive: bool, userblock_size: int = 0,
                        **storage) -> None:
    """The reference converter's layout (see the module docstring of ban.data.features_hdf5); ``storage``: h5py
    dataset options (chunks, compression; the converter used none)."""
    join = np.concatenate if adaptive else np.stack
    with h5py.File(path, "w", userblock_size=userblock_size) as file:
        if adaptive:
            counts = [len(image["boxes"]) for image in images]
            starts = np.cumsum([0] + counts[:-1])
            file["pos_boxes"] = np.stack([starts, starts + counts], axis=1)
        file.create_dataset("image_features", data=join([image["features"] for image in images]), **storage)
        file.create_dataset("image_bb", data=join([image["boxes"] for image in images]), **storage)
        file.create_dataset("spatial_features", data=join([expected_spatial(image) for image in images]).astype("f"),
                            **storage)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_authors_hdf5_cache(tmp_path, adaptive: bool, protocol: int) -> None:
    rng = np.random.default_rng(3)
    counts = [10, 25, 3] if adaptive else [36, 36, 36]
    images = [random_image(rng, image_id, count, 12) for image_id, count in zip([5, 900, 31], counts, strict=True)]
    order = [2, 0, 1]  # the map's indices need not follow the image ids
    stored = [images[i] for i in order]
    _write_authors_hdf5(tmp_path / "train36.hdf5", stored, adaptive)
    mapping = {image["image_id"]: index for index, image in enumerate(stored)}
    (tmp_path / "train36_imgid2idx.pkl").write_bytes(pickle.dumps(mapping, protocol=protocol))
    store = FeatureStore.open(tmp_path / "train36.hdf5")
    assert sorted(store.image_ids.tolist()) == [5, 31, 900] and store.feature_dim == 12
    for image in images:
        features, spatial, boxes = store.get(image["image_id"])
        np.testing.assert_array_equal(features, image["features"])
        np.testing.assert_array_equal(boxes, image["boxes"])
        np.testing.assert_allclose(spatial, expected_spatial(image), rtol=1e-6)
        assert store.num_boxes(image["image_id"]) == len(image["boxes"])
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.get(900)[0], images[1]["features"])


def test_hdf5_with_wrong_layout(tmp_path) -> None:
    with h5py.File(tmp_path / "x.hdf5", "w") as file:
        file["image_features"] = np.zeros((4, 8), "f")
        file["image_bb"] = np.zeros((4, 5), "f")
        file["spatial_features"] = np.zeros((4, 6), "f")
        file["pos_boxes"] = np.array([[0, 4]])
    (tmp_path / "x_imgid2idx.pkl").write_bytes(pickle.dumps({1: 0}))
    with pytest.raises(DataError, match="expected width 4") as error:
        FeatureStore.open(tmp_path / "x.hdf5")
    assert error.value.field == "image_bb"


def test_python2_protocol0_pickle_is_read(tmp_path) -> None:
    # What Python 2's cPickle.dump({3: 0, 10**12: 1}) writes (protocol 0: INT, LONG with an L suffix, SETITEM).
    data = b"(dp0\nI3\nI0\nsL1000000000000L\nI1\ns."
    assert pickle.loads(data) == {3: 0, 10**12: 1}  # the standard unpickler agrees on what it holds
    path = tmp_path / "m.pkl"
    path.write_bytes(data)
    assert read_int_dict(path) == {3: 0, 10**12: 1}


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_pickle_with_code_is_refused_without_running_it(tmp_path) -> None:
    exploit = _Exploit()
    exploit.target = str(tmp_path / "pwned")
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({1: exploit}))
    with pytest.raises(DataError, match="not allowed") as error:
        read_int_dict(path)
    assert error.value.path == str(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("value", [{1: "a"}, [1, 2], {1: 2.5}, {1: True}, {(1, 2): 3}])
def test_pickle_of_something_else_is_refused(tmp_path, value) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(value, protocol=2))
    with pytest.raises(DataError) as error:
        read_int_dict(path)
    assert error.value.path == str(path)


def test_truncated_pickle(tmp_path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({1: 2, 3: 4}, protocol=0)[:-1])
    with pytest.raises(DataError) as error:
        read_int_dict(path)
    assert error.value.path == str(path)


def test_union_of_sources_via_features_json(tmp_path, images) -> None:
    write_feature_store((FeatureRecord(**image) for image in images[:2]), tmp_path / "a")
    write_feature_store((FeatureRecord(**image) for image in images[2:]), tmp_path / "b")
    (tmp_path / "features.json").write_text('{"sources": ["a", "b"]}')
    store = FeatureStore.open(tmp_path / "features.json")
    assert store.image_ids.tolist() == [42, 7, 123456, 9]
    np.testing.assert_array_equal(store.get(9)[0], images[3]["features"])
    with pytest.raises(DataError, match=f"image 7 appears in more than one source: {tmp_path / 'a'}, "):
        UnionFeatureStore([FeatureStore.open(tmp_path / "a"), FeatureStore.open(tmp_path / "a")])
    write_feature_store([FeatureRecord(**random_image(np.random.default_rng(0), 99, 2, 5))], tmp_path / "c")
    with pytest.raises(DataError, match=r"different feature widths: \S*a \(\d+-d\), \S*c \(5-d\)"):
        UnionFeatureStore([FeatureStore.open(tmp_path / "a"), FeatureStore.open(tmp_path / "c")])


def test_sources_read_in_place_are_stamped_and_checked(tmp_path, images) -> None:
    """A features.json records the identity of each source outside its folder: an HDF5 cache (size, modification
    time of it and its image-id map) replaced since is refused; a listing written before the stamps still opens."""
    _write_authors_hdf5(tmp_path / "val.hdf5", images[1:], adaptive=True)
    (tmp_path / "val_imgid2idx.pkl").write_bytes(pickle.dumps({image["image_id"]: i for i, image in
                                                               enumerate(images[1:])}))
    write_feature_store((FeatureRecord(**image) for image in images[:1]), tmp_path / "data" / "inside")
    listing = tmp_path / "data" / "features.json"
    write_sources_file(listing, [tmp_path / "data" / "inside", tmp_path / "val.hdf5"])
    written = json.loads(listing.read_text())
    assert written["sources"] == ["inside", str(tmp_path / "val.hdf5")] and written["identities"][0] is None
    assert FeatureStore.open(listing).image_ids.tolist() == [42, 7, 123456, 9]
    (tmp_path / "val_imgid2idx.pkl").write_bytes(pickle.dumps({7: 0}))
    with pytest.raises(DataError, match=r"features\.json.*source \S*val\.hdf5 changed since this dataset was "
                                        r"prepared \(\S*val_imgid2idx\.pkl differs\): prepare it again"):
        FeatureStore.open(listing)
    listing.write_text(json.dumps({"sources": written["sources"]}))  # as written before the stamps
    assert FeatureStore.open(listing).image_ids.tolist() == [42, 7]
    os.replace(tmp_path / "val.hdf5", tmp_path / "moved.hdf5")
    with pytest.raises(DataError, match=r"features\.json: field 'sources': source \S*val\.hdf5 is not there \(moved "
                                        r"or deleted\?\)"):
        FeatureStore.open(listing)


def _two_images_hdf5(path, **storage) -> list[dict]:
    """An adaptive authors' cache of images 1 and 2 (4 boxes each, 6-d features) with its id map → the images;
    ``storage``: options of :func:`_write_authors_hdf5`."""
    rng = np.random.default_rng(5)
    images = [random_image(rng, image_id, 4, 6) for image_id in (1, 2)]
    _write_authors_hdf5(path, images, adaptive=True, **storage)
    path.with_name(f"{path.stem}_imgid2idx.pkl").write_bytes(pickle.dumps({1: 0, 2: 1}))
    return images


def test_hdf5_row_ranges_and_values_are_checked(tmp_path) -> None:
    images = _two_images_hdf5(tmp_path / "c.hdf5")
    with h5py.File(tmp_path / "c.hdf5", "a") as file:
        file["pos_boxes"][1] = [4, 9]  # past the 8 rows
    with pytest.raises(DataError, match="not a non-empty range inside the 8 rows") as error:
        FeatureStore.open(tmp_path / "c.hdf5")
    assert error.value.field == "pos_boxes" and error.value.record == "index 1"
    with h5py.File(tmp_path / "c.hdf5", "a") as file:
        file["pos_boxes"][1] = [4, 8]
        file["image_bb"][5, 2] = np.inf
    store = FeatureStore.open(tmp_path / "c.hdf5")
    np.testing.assert_array_equal(store.get(1)[0], images[0]["features"])
    with pytest.raises(DataError, match="NaN or infinite") as error:
        store.get(2)
    assert error.value.field == "image_bb" and error.value.record == "image_id=2"


def test_an_hdf5_image_of_no_rows_is_refused(tmp_path) -> None:
    """``pos_boxes`` holds ``[start, end)`` rows (``features_hdf5._check_rows``): a range [4, 4] is an image of no
    boxes, refused like a range past the end, naming the index and the field."""
    _two_images_hdf5(tmp_path / "c.hdf5")
    with h5py.File(tmp_path / "c.hdf5", "a") as file:
        file["pos_boxes"][1] = [4, 4]
    with pytest.raises(DataError, match=re.escape("rows [4, 4] of image 2 are not a non-empty range")) as error:
        FeatureStore.open(tmp_path / "c.hdf5")
    assert (error.value.path, error.value.record, error.value.field) == (str(tmp_path / "c.hdf5"), "index 1",
                                                                          "pos_boxes")


# how the cache's datasets are stored: as the reference converter wrote them (memory-mapped), after a userblock,
# or chunked and compressed (read through h5py)
HDF5_STORAGE = {"contiguous": {}, "userblock": {"userblock_size": 512},
                "chunked": {"chunks": True, "compression": "gzip"}}


def _nan_in_image_2(path: Path) -> None:
    """Plant a NaN in the features of image 2 of :func:`_two_images_hdf5` (row 5 of 8)."""
    with h5py.File(path, "a") as file:
        file["image_features"][5, 1] = np.nan


@pytest.mark.parametrize("storage", HDF5_STORAGE)
def test_hdf5_values_are_checked_on_the_first_read_of_each_image(tmp_path, storage) -> None:
    """A NaN in an image's features is reported on the first read of that image, naming it, and on every read
    after (an image that failed is never taken as checked); the other image reads."""
    path = tmp_path / "c.hdf5"
    images = _two_images_hdf5(path, **HDF5_STORAGE[storage])
    _nan_in_image_2(path)
    store = FeatureStore.open(path)
    for _ in range(2):
        with pytest.raises(DataError, match=r"c\.hdf5: record image_id=2: field 'image_features': value 7 is nan: "
                                            "NaN or infinite"):
            store.get(2)
        np.testing.assert_array_equal(store.get(1)[0], images[0]["features"])


def test_hdf5_values_of_an_image_are_checked_once(tmp_path) -> None:
    """An image whose values passed is not checked again by the same store (reading stays a copy of the rows, as
    from our store): a NaN written into its rows afterwards is read as it is; a store opened afresh refuses it."""
    path = tmp_path / "c.hdf5"
    _two_images_hdf5(path)
    store = FeatureStore.open(path)
    store.get(2)
    with h5py.File(path, "r") as file:
        offset = file["image_features"].id.get_offset() + (5 * 6 + 1) * 4  # row 5, column 1: image 2's
    with open(path, "r+b") as file:  # behind h5py's back: the store holds the file open for reading
        file.seek(offset)
        file.write(np.float32(np.nan).tobytes())
    assert np.isnan(store.get(2)[0][1, 1])
    with pytest.raises(DataError, match="image_id=2: field 'image_features': value 7 is nan"):
        FeatureStore.open(path).get(2)


@pytest.mark.parametrize("storage", HDF5_STORAGE)
@pytest.mark.parametrize("adaptive", [True, False])
def test_hdf5_storage_is_read_alike(tmp_path, storage, adaptive) -> None:
    """Memory-mapped or read through h5py, every image reads as written, bit for bit, in a forked child (a
    DataLoader worker) too, where the handles of the parent are not used."""
    rng = np.random.default_rng(11)
    images = [random_image(rng, image_id, 5 if adaptive else 4, 6) for image_id in (3, 1, 2)]
    path = tmp_path / "c.hdf5"
    _write_authors_hdf5(path, images, adaptive, **HDF5_STORAGE[storage])
    path.with_name("c_imgid2idx.pkl").write_bytes(pickle.dumps({3: 0, 1: 1, 2: 2}))
    store = FeatureStore.open(path)
    for image in images:
        features, spatial, boxes = store.get(image["image_id"])
        assert features.dtype == spatial.dtype == boxes.dtype == np.float32 and features.flags.owndata
        np.testing.assert_array_equal(features, image["features"])
        np.testing.assert_array_equal(boxes, image["boxes"])
        np.testing.assert_array_equal(spatial, expected_spatial(image).astype(np.float32))
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_exit_with_read_check, args=(store, images))  # store inherited, not pickled
    child.start()
    child.join(60)
    assert child.exitcode == 0


def _exit_with_read_check(store: FeatureStore, images: list[dict]) -> None:
    same = all(np.array_equal(store.get(image["image_id"])[0], image["features"]) for image in images)
    os._exit(0 if same and store._file_pid == os.getpid() else 1)


@pytest.mark.parametrize("storage", HDF5_STORAGE)
def test_boxes_alone_equal_the_boxes_of_a_full_read(tmp_path, images, storage) -> None:
    """``boxes()`` equals ``get()[2]`` for every image of our store, the authors' cache (adaptive and fixed) and
    a union of them, and refuses an image a store lacks alike."""
    write_feature_store((FeatureRecord(**image) for image in images[:2]), tmp_path / "store")
    fixed = [random_image(np.random.default_rng(1), image_id, 36, 16) for image_id in (11, 12)]
    for name, held, adaptive in (("adaptive.hdf5", images[2:], True), ("fixed.hdf5", fixed, False)):
        _write_authors_hdf5(tmp_path / name, held, adaptive, **HDF5_STORAGE[storage])
        (tmp_path / f"{Path(name).stem}_imgid2idx.pkl").write_bytes(
            pickle.dumps({image["image_id"]: index for index, image in enumerate(held)}))
    write_sources_file(tmp_path / "features.json", [tmp_path / name for name in ("store", "adaptive.hdf5",
                                                                                 "fixed.hdf5")])
    for source in ("store", "adaptive.hdf5", "fixed.hdf5", "features.json"):
        store = FeatureStore.open(tmp_path / source)
        for image_id in store.image_ids.tolist():
            boxes = FeatureStore.open(tmp_path / source).boxes(image_id)  # first read of the image
            assert boxes.dtype == np.float32 and boxes.flags.owndata
            np.testing.assert_array_equal(boxes, store.get(image_id)[2])
        for read in (store.get, store.boxes):
            with pytest.raises(KeyError, match="image 5 has no features in this store"):
                read(5)
    assert FeatureStore.open(tmp_path / "features.json").image_ids.tolist() == [42, 7, 123456, 9, 11, 12]


@pytest.mark.parametrize("storage", HDF5_STORAGE)
def test_hdf5_boxes_alone_skip_the_features_but_not_the_checks_of_boxes(tmp_path, storage) -> None:
    """``boxes()`` of the authors' cache reads no features (a NaN there is not seen, and the image's values are
    still checked by its first ``get()``) and refuses what ``get()`` refuses in the boxes, naming the field."""
    path = tmp_path / "c.hdf5"
    images = _two_images_hdf5(path, **HDF5_STORAGE[storage])
    _nan_in_image_2(path)
    with h5py.File(path, "a") as file:
        file["image_bb"][2] = [50, 50, 10, 60]  # image 1, box 2
    store = FeatureStore.open(path)
    np.testing.assert_array_equal(store.boxes(2), images[1]["boxes"])
    with pytest.raises(DataError, match="image_id=2: field 'image_features': value 7 is nan"):
        store.get(2)
    for read in (store.boxes, store.get):
        with pytest.raises(DataError, match=r"record image_id=1: field 'image_bb': box 2 \(50, 50, 10, 60\) has "
                                            "x2 < x1"):
            read(1)


def _rewrite_npy(path: Path, change) -> None:
    """Replace the array in ``path`` by ``change(array)``."""
    np.save(path, change(np.load(path)))


@pytest.mark.parametrize(
    ("name", "damage", "message", "record"),
    [
        ("offsets.npy", lambda p: _rewrite_npy(p, lambda a: np.r_[a[:2], a[1] - 3, a[3:]]), "does not rise",
         "image_id=7"),
        ("offsets.npy", lambda p: _rewrite_npy(p, lambda a: np.r_[a[:2], a[1], a[3:]]),
         "0 boxes, at least 1 expected", "image_id=7"),
        ("offsets.npy", lambda p: _rewrite_npy(p, lambda a: a + 1), "does not start at 0", None),
        ("offsets.npy", lambda p: p.write_bytes(b"not an npy file"), "not a readable .npy file", None),
        ("offsets.npy", lambda p: p.unlink(), "missing", None),
        ("image_ids.npy", lambda p: _rewrite_npy(p, lambda a: np.r_[a[:3], a[0]]),
         "image 42 appears twice (entries 0 and 3)", None),
        ("image_ids.npy", lambda p: _rewrite_npy(p, lambda a: a[:3]), "shape [3], expected [4]", None),
        ("image_sizes.npy", lambda p: _rewrite_npy(p, lambda a: a * [1, 0]), "not positive", "image_id=42"),
        ("image_sizes.npy", lambda p: _rewrite_npy(p, lambda a: a.astype(np.float32)), "integer", None),
        ("features.npy", lambda p: p.write_bytes(p.read_bytes()[:-100]), "not a readable .npy file", None),
        ("features.npy", lambda p: _rewrite_npy(p, lambda a: a[:, :15]), "shape [147, 15], expected [147, 16]",
         None),
        ("features.npy", lambda p: _rewrite_npy(p, lambda a: a.astype(np.float64)), "float64", None),
        ("spatial.npy", lambda p: _rewrite_npy(p, lambda a: a[:-1]), "shape [146, 6], expected [147, 6]", None),
        ("boxes.npy", lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable .npy file", None),
        ("store.json", lambda p: p.write_text('{"format_version": 1, "feature_dim": "16"}'), "expected int",
         None),
        ("store.json", lambda p: p.write_text(p.read_text().replace('"num_boxes": 147', '"num_boxes": 150')),
         "offsets end at 147", None),
        ("store.json", lambda p: p.write_text(p.read_text().replace('"float32"', '"int8"')), "dtype", None),
        ("store.json", lambda p: p.write_text("[]"), "expected a JSON object, got list", None),
        ("store.json", lambda p: p.write_text(p.read_text().replace('"format_version": 1', '"format_version": 0')),
         "format version 0, expected 1: written by another version of ban; rerun `ban prepare`", None),
    ],
)
def test_store_structure_is_checked_when_opened(tmp_path, images, name, damage, message, record) -> None:
    """A damaged store is refused at open, naming the file (and the image), not by a NumPy error or a wrong
    read later."""
    write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store")
    damage(tmp_path / "store" / name)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        FeatureStore.open(tmp_path / "store")
    assert error.value.path in (str(tmp_path / "store" / name), str(tmp_path / "store" / "offsets.npy"))
    assert error.value.record == record


def test_store_values_are_not_rescanned_on_read(tmp_path, images) -> None:
    """Values are checked when the store is written; a NaN put into features.npy afterwards is read as it is
    (the trainer's non-finite check stops such a run): reading stays a plain copy of the rows."""
    write_feature_store((FeatureRecord(**image) for image in images), tmp_path / "store")
    features = np.load(tmp_path / "store" / "features.npy", mmap_mode="r+")
    features[0, 0] = np.nan
    features.flush()
    del features
    assert np.isnan(FeatureStore.open(tmp_path / "store").get(42)[0][0, 0])


def test_writer_refuses_an_image_without_boxes(tmp_path, images) -> None:
    empty = FeatureRecord(5, 10, 10, np.zeros((0, 4), np.float32), np.zeros((0, 16), np.float32))
    with pytest.raises(DataError, match="no boxes") as error:
        write_feature_store([FeatureRecord(**images[0]), empty], tmp_path / "store")
    assert error.value.record == "image_id=5" and error.value.field == "boxes"
    assert not (tmp_path / "store").exists()


def test_boxes_outside_the_image_and_empty_boxes_are_read(tmp_path) -> None:
    """Real detector files hold boxes reaching slightly past the image and zero-size boxes: both are kept."""
    boxes = np.array([[-3.5, -1, 644, 481], [10, 20, 10, 20], [0, 0, 640, 480]], np.float32)
    path = tmp_path / "f.tsv"
    write_official_tsv(path, [{"image_id": 1, "image_w": 640, "image_h": 480, "boxes": boxes,
                               "features": np.ones((3, 4), np.float32)}])
    (record,) = iter_tsv_records(path)
    np.testing.assert_array_equal(record.boxes, boxes)


def test_hdf5_values_beyond_the_limit_and_inverted_boxes(tmp_path) -> None:
    """The HDF5 reader refuses what the TSV reader refuses: values beyond ±65504, boxes with x2 < x1."""
    _two_images_hdf5(tmp_path / "c.hdf5")
    with h5py.File(tmp_path / "c.hdf5", "a") as file:
        file["image_features"][1, 3] = 3e38
        file["image_bb"][6] = [50, 50, 10, 60]
    store = FeatureStore.open(tmp_path / "c.hdf5")
    with pytest.raises(DataError, match="value 9 is 3e\\+38: larger than 65504") as error:
        store.get(1)
    assert error.value.field == "image_features" and error.value.record == "image_id=1"
    with pytest.raises(DataError, match="box 2 .* x2 < x1") as error:
        store.get(2)
    assert error.value.field == "image_bb" and error.value.record == "image_id=2"


def test_sources_of_other_widths_are_named_before_or_as_the_tsv_streams(tmp_path, images) -> None:
    """Stores read in place of different widths are named before any TSV is converted; a TSV of another width than
    theirs is refused at its first record, naming its file and line, not the temporary dataset being built."""
    from ban.data.feature_setup import set_up_features

    write_feature_store((FeatureRecord(**image) for image in images[:2]), tmp_path / "wide")  # 16-d
    write_feature_store([FeatureRecord(**random_image(np.random.default_rng(0), 99, 2, 5))], tmp_path / "narrow")
    narrow_tsv = tmp_path / "narrow.tsv"
    write_official_tsv(narrow_tsv, [random_image(np.random.default_rng(1), 5, 3, 5)])
    cases = [
        ([tmp_path / "wide", tmp_path / "narrow"], None,
         rf"{tmp_path / 'narrow'}: field 'feature_dim': features of another width than 16: \S*wide \(16-d\), "
         r"\S*narrow \(5-d\)"),
        ([tmp_path / "wide"], 5, r"\S*wide: field 'feature_dim': features of another width than 5 \(--feature-dim\)"),
        ([narrow_tsv, tmp_path / "wide"], None,
         rf"{narrow_tsv}: record line 1 \(image_id=5\): field 'features': feature width 5 .*expected 16"),
    ]
    for number, (sources, feature_dim, message) in enumerate(cases):
        build = tmp_path / f"build{number}"
        build.mkdir()
        with pytest.raises(DataError, match=message):
            set_up_features(sources, tmp_path / "no-previous", build, feature_dim=feature_dim, progress=False)
        assert not (build / "features").exists()
