"""Property-based corruption of the region-feature readers: bottom-up TSV rows, the authors' HDF5 layouts and
their image-id pickles. Every corruption gives a DataError naming the file, and whatever is accepted equals an
independent decoding of the same bytes (nothing silently wrong: no rows read past an image, no NaN, infinite or
absurdly large value and no box with x2 < x1 or y2 < y1 passed on).
"""

from __future__ import annotations

import base64
import io
import pickle
import struct
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ban.data.features import FeatureStore
from ban.data.features_tsv import iter_tsv_records
from ban.data.pickle_map import read_int_dict
from ban.errors import DataError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
DIM = 3
LIMIT = 65504  # the largest float16: larger magnitudes are refused


def tsv_line(image_id: int, width: int, height: int, boxes: np.ndarray, features: np.ndarray) -> bytes:
    encode = base64.b64encode
    return b"\t".join([str(image_id).encode(), str(width).encode(), str(height).encode(), str(len(boxes)).encode(),
                       encode(boxes.astype(np.float32).tobytes()), encode(features.astype(np.float32).tobytes())])


RNG = np.random.default_rng(0)
IMAGES = [(7 + i, 640, 480, np.sort(RNG.uniform(0, 400, (n, 2, 2)), axis=1).reshape(n, 4).astype(np.float32),
           RNG.normal(size=(n, DIM)).astype(np.float32)) for i, n in enumerate((2, 1, 3))]  # x1 ≤ x2, y1 ≤ y2
TSV = b"".join(tsv_line(*image) + b"\r\n" for image in IMAGES)


def sane(values: np.ndarray) -> bool:
    """Every value finite and within ±LIMIT."""
    return bool(np.isfinite(values).all() and (np.abs(values) <= LIMIT).all())


def naive_records(data: bytes) -> list[tuple] | None:
    """Independent decoding of a TSV file by the format's rules; None when the file breaks them."""
    records, width_seen = [], None
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            continue
        fields = line.split(b"\t")
        if len(fields) != 6:
            return None
        try:
            image_id, width, height, count = (int(field) for field in fields[:4])
            boxes = np.frombuffer(base64.b64decode(fields[4], validate=True), dtype=np.float32)
            features = np.frombuffer(base64.b64decode(fields[5], validate=True), dtype=np.float32)
        except ValueError:
            return None
        if min(width, height, count) <= 0 or boxes.size != 4 * count or features.size % count:
            return None
        if any(not -2**63 <= value < 2**63 for value in (image_id, width, height, count)):
            return None
        if width_seen is not None and features.size // count != width_seen:
            return None
        width_seen = features.size // count
        if not (sane(boxes) and sane(features)):
            return None
        boxes = boxes.reshape(count, 4)
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            return None
        records.append((image_id, width, height, boxes, features.reshape(count, -1)))
    return records


@st.composite
def corrupted_tsv(draw: st.DrawFn) -> bytes:
    data = bytearray(TSV)
    kind = draw(st.sampled_from(["flip", "cut", "insert", "field", "nan", "inverted"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        data[at] ^= draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 0x7F, 0xFF]))
    elif kind == "cut":
        del data[at:]
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=6) | st.sampled_from([b"\t", b"\n", b"=", b"\r\n\t"]))
    elif kind == "field":
        lines = bytes(data).split(b"\r\n")
        row = draw(st.integers(0, len(IMAGES) - 1))
        fields = lines[row].split(b"\t")
        fields[draw(st.integers(0, 5))] = draw(st.sampled_from([b"", b"-1", b"0", b"1e3", b"x", b"99", b"4", b"AAAA",
                                                                 b"AAA=", b"A", b"\xff", b"9" * 23, b"-" + b"9" * 19]))
        lines[row] = b"\t".join(fields)
        return b"\r\n".join(lines)
    else:
        row = draw(st.integers(0, len(IMAGES) - 1))
        changed = list(IMAGES[row])
        if kind == "inverted":  # a box's corners swapped, or moved slightly past the image / made empty (valid)
            changed[3] = changed[3].copy()
            box = changed[3][draw(st.integers(0, len(changed[3]) - 1))]
            axis = draw(st.sampled_from([0, 1]))
            box[[axis, axis + 2]] = draw(st.sampled_from([box[[axis + 2, axis]], [-2.5, 700.0], [5.0, 5.0]]))
        else:
            which = draw(st.sampled_from([3, 4]))  # the boxes or the features
            changed[which] = changed[which].copy()
            changed[which].flat[draw(st.integers(0, changed[which].size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -7e4, 6e4]))
        return b"".join(tsv_line(*(changed if i == row else image)) + b"\r\n" for i, image in enumerate(IMAGES))
    return bytes(data)


@FUZZ
@given(data=corrupted_tsv())
def test_corrupted_tsv_rows(data, tmp_path):
    path = tmp_path / "features.tsv"
    path.write_bytes(data)
    expected = naive_records(data)
    try:
        got = [(r.image_id, r.image_w, r.image_h, r.boxes, r.features) for r in iter_tsv_records(path)]
    except DataError as error:
        assert "features.tsv" in str(error) and "line" in str(error)
        assert expected is None, "a valid file was refused"
        return
    assert expected is not None, "a file that breaks the format was accepted"
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine[:3] == theirs[:3]
        np.testing.assert_array_equal(mine[3], theirs[3])
        np.testing.assert_array_equal(mine[4], theirs[4])


def write_hdf5(path: Path, images: list[tuple], adaptive: bool, protocol: int = 2) -> dict[int, int]:
    """The reference converter's layout; returns the image-id map it pickles next to the file."""
    with h5py.File(path, "w") as file:
        if adaptive:
            counts = [len(image[3]) for image in images]
            ends = np.cumsum(counts)
            file["image_features"] = np.concatenate([image[4] for image in images])
            file["image_bb"] = np.concatenate([image[3] for image in images])
            file["spatial_features"] = np.zeros((int(ends[-1]), 6), dtype=np.float32)
            file["pos_boxes"] = np.stack([ends - counts, ends], axis=1)
        else:
            file["image_features"] = np.stack([image[4][:1].repeat(2, 0) for image in images])
            file["image_bb"] = np.stack([image[3][:1].repeat(2, 0) for image in images])
            file["spatial_features"] = np.zeros((len(images), 2, 6), dtype=np.float32)
    mapping = {image[0]: index for index, image in enumerate(images)}
    path.with_name(f"{path.stem}_imgid2idx.pkl").write_bytes(pickle.dumps(mapping, protocol=protocol))
    return mapping


def hdf5_change(draw: st.DrawFn, file: h5py.File) -> None:
    """One structural corruption of an HDF5 cache, in place."""
    name = draw(st.sampled_from(["image_features", "image_bb", "spatial_features", "pos_boxes"]))
    kind = draw(st.sampled_from(["drop", "group", "reshape", "strings", "pos", "nan", "scalar"]))
    if not isinstance(file.get(name), h5py.Dataset):  # dropped or made a group by an earlier change
        return
    shape = file[name].shape
    if kind in ("drop", "group", "reshape", "strings", "scalar"):
        del file[name]
        if kind == "group":
            file.create_group(name)
        elif kind == "reshape":
            file[name] = np.zeros(tuple(max(0, s + draw(st.integers(-1, 1))) for s in shape) + (1,) * draw(
                st.integers(0, 1)), dtype=np.float32)
        elif kind == "strings":
            file[name] = np.full(shape, b"x", dtype="S1")
        elif kind == "scalar":
            file[name] = 3.0
    elif kind == "pos" and isinstance(file.get("pos_boxes"), h5py.Dataset) and file["pos_boxes"].ndim == 2:
        pos = file["pos_boxes"][...]
        pos.flat[draw(st.integers(0, pos.size - 1))] = draw(st.sampled_from([-1, 0, 2, 6, 7, 100, 2**40]))
        file["pos_boxes"][...] = pos
    elif kind == "nan" and file[name].dtype.kind == "f" and file[name].size:
        data = file[name][...]
        data.flat[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from([np.nan, 3e38, -1e5, 1e3]))
        file[name][...] = data


def valid_layout(path: Path, mapping: dict[int, int]) -> bool:
    """Independent check of the reference layout: datasets present, shapes consistent, row ranges inside
    the arrays, the map's indices in range, every value finite and within ±LIMIT, box corners in order."""
    with h5py.File(path, "r") as file:
        names = ("image_features", "image_bb", "spatial_features")
        if any(not isinstance(file.get(n), h5py.Dataset) or file[n].dtype.kind != "f" for n in names):
            return False
        features, boxes, spatial = (file[n][...] for n in names)
        if features.ndim not in (2, 3) or boxes.shape != features.shape[:-1] + (4,) or \
                spatial.shape != features.shape[:-1] + (6,):
            return False
        if not all(sane(a) for a in (features, boxes, spatial)):
            return False
        if (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
            return False
        if features.ndim == 3:
            return all(0 <= i < len(features) for i in mapping.values())
        pos = file.get("pos_boxes")
        if not isinstance(pos, h5py.Dataset) or pos.dtype.kind not in "iu" or pos.ndim != 2 or pos.shape[1] != 2:
            return False
        pos = pos[...]
        return all(0 <= i < len(pos) and 0 <= pos[i, 0] < pos[i, 1] <= len(features) for i in mapping.values())


@FUZZ
@given(adaptive=st.booleans(), data=st.data())
def test_corrupted_hdf5_layouts(adaptive, data, tmp_path):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "train36.hdf5"  # a fresh folder per example
    mapping = write_hdf5(path, IMAGES, adaptive)
    with h5py.File(path, "a") as file:
        for _ in range(data.draw(st.integers(1, 2))):
            hdf5_change(data.draw, file)
    valid = valid_layout(path, mapping)
    try:
        store = FeatureStore.open(path)
        read = {image_id: store.get(image_id) for image_id in mapping}
    except DataError as error:
        assert "train36" in str(error)
        assert not valid, "a valid cache was refused"
        return
    assert valid, "a cache that breaks the layout was accepted"
    with h5py.File(path, "r") as file:
        for image_id, index in mapping.items():
            rows = slice(*file["pos_boxes"][index]) if adaptive else index
            np.testing.assert_array_equal(read[image_id][0], file["image_features"][rows])
            np.testing.assert_array_equal(read[image_id][2], file["image_bb"][rows])


@FUZZ
@given(truncate=st.booleans(), cut=st.integers(0, 4000), garbage=st.binary(min_size=1, max_size=16),
       at=st.integers(0, 4500))
def test_truncated_or_garbled_hdf5_files(truncate, cut, garbage, at, tmp_path):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "val.hdf5"
    mapping = write_hdf5(path, IMAGES, adaptive=True)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if truncate else data[:at] + garbage + data[at + len(garbage):])
    try:
        store = FeatureStore.open(path)
        read = {image_id: store.get(image_id) for image_id in mapping}
    except DataError as error:
        assert "val" in str(error)
        return
    with h5py.File(path, "r") as file:  # what loads is what the (possibly garbled) file holds, checked values
        for image_id, index in mapping.items():
            rows = slice(*file["pos_boxes"][index])
            np.testing.assert_array_equal(read[image_id][0], file["image_features"][rows])
            np.testing.assert_array_equal(read[image_id][2], file["image_bb"][rows])
            assert np.isfinite(read[image_id][0]).all() and read[image_id][0].shape[1] == DIM


@pytest.mark.parametrize("garbage", [b"\x00", b"\x00@"])
def test_a_garbled_datatype_is_a_data_error(garbage, tmp_path):
    """Bytes of image_features' float type overwritten: h5py raised ValueError / RuntimeError reading the dtype
    (found by a seed sweep of the test above)."""
    path = tmp_path / "val.hdf5"
    write_hdf5(path, IMAGES, adaptive=True)
    data = path.read_bytes()
    path.write_bytes(data[:1760] + garbage + data[1760 + len(garbage):])
    with pytest.raises(DataError, match="val.hdf5: cannot read as HDF5"):
        FeatureStore.open(path)


class Refuse(pickle.Unpickler):
    """The standard unpickler with every global refused: a safe reference for what a pickle holds."""

    def find_class(self, module: str, name: str) -> None:
        raise pickle.UnpicklingError(f"global {module}.{name}")


def reference_load(data: bytes) -> object:
    """What the (global-refusing) standard unpickler reads; None when it refuses the bytes. Bytes that carry no
    content and that our reader does not check are set right first: a protocol number above the highest known
    one, and the length of a leading frame (protocol 4+)."""
    data = bytearray(data)
    if data[:1] == b"\x80" and len(data) > 1:
        data[1] = min(data[1], pickle.HIGHEST_PROTOCOL)
    if data[2:3] == b"\x95" and len(data) >= 11:
        data[3:11] = struct.pack("<Q", len(data) - 11)
    try:
        return Refuse(io.BytesIO(bytes(data))).load()
    except Exception:  # noqa: BLE001 - any failure of the reference means "not a valid pickle"
        return None


@FUZZ
@given(protocol=st.integers(0, 5), mapping=st.dictionaries(st.integers(-2**40, 2**40), st.integers(0, 2**33),
                                                           max_size=5),
       flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=3), cut=st.integers(0, 300))
@example(protocol=4, mapping={-1: 0}, flips=[(12, 1)], cut=300)  # MEMOIZE → FRAME swallowing the rest of the file
def test_garbled_image_id_pickles(protocol, mapping, flips, cut, tmp_path):
    data = bytearray(pickle.dumps(mapping, protocol=protocol))
    for position, mask in flips:
        if position < len(data):
            data[position] ^= mask
    data = bytes(data[:cut]) if cut < len(data) else bytes(data)
    path = tmp_path / "x_imgid2idx.pkl"
    path.write_bytes(data)
    try:
        result = read_int_dict(path)
    except DataError as error:
        assert "x_imgid2idx.pkl" in str(error)
        return
    assert result == reference_load(data)  # what we accept is what the pickle holds


@pytest.mark.parametrize("change", ["negative index", "index past the end", "duplicate index"])
def test_image_id_map_that_does_not_fit_the_cache(change, tmp_path):
    path = tmp_path / "train.hdf5"
    write_hdf5(path, IMAGES, adaptive=True)
    mapping = {"negative index": {7: -1}, "index past the end": {7: 3}, "duplicate index": {7: 0, 8: 0}}[change]
    path.with_name("train_imgid2idx.pkl").write_bytes(pickle.dumps(mapping))
    with pytest.raises(DataError, match="train_imgid2idx.pkl"):
        FeatureStore.open(path)
