"""What a --features list holds, read before the conversion (ban.data.feature_sources), on real TSV and HDF5 files."""

from __future__ import annotations

import base64
import os
import threading

import numpy as np
import pytest
from test_data_features import _write_authors_hdf5, random_image, write_official_tsv

from ban.data.feature_sources import check_feature_sources, images_of_sources
from ban.data.features_tsv import iter_tsv_image_ids
from ban.errors import DataError


def _record(image_id: int, boxes: int, width: int) -> bytes:
    return b"\t".join([str(image_id).encode(), b"640", b"480", str(boxes).encode(),
                       base64.b64encode(np.tile(np.float32([[1, 2, 30, 40]]), (boxes, 1)).tobytes()),
                       base64.b64encode(np.ones((boxes, width), np.float32).tobytes())]) + b"\n"


def test_a_jump_that_lands_on_a_later_line_end_is_caught_by_an_exact_reading(tmp_path):
    """Record 2 is 1 float wide, not 8: its computed end falls exactly on record 3's end, so the jumping pass
    misses image 345. An image the caller wants then missing, the file is read again line by line."""
    path = tmp_path / "widths.tsv"
    path.write_bytes(_record(1, 2, 8) + _record(2, 3, 1) + _record(345, 1, 13) + _record(4, 2, 8))
    assert [image_id for _, image_id in iter_tsv_image_ids(path)] == [1, 2, 4]
    assert list(iter_tsv_image_ids(path, jump=False)) == [(1, 1), (2, 2), (3, 345), (4, 4)]
    assert images_of_sources([path], {1, 2, 345, 4}, progress=False) == dict.fromkeys([1, 2, 345, 4], str(path))


def test_an_image_held_twice_is_named_with_its_sources(tmp_path):
    rng = np.random.default_rng(0)
    images = {image_id: random_image(rng, image_id, 3, 8) for image_id in (1, 2, 3)}
    write_official_tsv(tmp_path / "a.tsv", [images[1], images[2]])
    write_official_tsv(tmp_path / "repeated.tsv", [images[3], images[1], images[3]])
    _write_authors_hdf5(tmp_path / "val.hdf5", [images[2]], adaptive=True)
    (tmp_path / "val_imgid2idx.pkl").write_bytes(b"(dp0\nI2\nI0\ns.")
    a, repeated, hdf5 = (str(tmp_path / name) for name in ("a.tsv", "repeated.tsv", "val.hdf5"))
    for sources, message, record in [
        ([repeated], f"image 3 appears twice in {repeated} \\(lines 1 and 3\\)", "line 3"),
        ([a, hdf5], f"image 2 appears in more than one source: {a}, {hdf5} \\({a} line 2\\)", None),
        ([a, repeated], f"image 1 appears in more than one source: {a}, {repeated} \\({a} line 1, {repeated} "
                        "line 2\\)", "line 2"),  # though no question uses it
    ]:
        with pytest.raises(DataError, match=message) as error:
            images_of_sources(sources, {2}, progress=False)  # VQA: every record is converted
        assert error.value.record == record
    # where only the wanted images are converted (Flickr30k's TSV files), only they must be held once
    assert images_of_sources([a, repeated], {2}, held_once={2}, progress=False) == {1: a, 2: a, 3: repeated}
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="given twice in --features"):
        check_feature_sources([a, str(tmp_path / "sub" / ".." / "a.tsv")])  # the same file, however it is written
    with pytest.raises(DataError, match="missing.tsv: field 'features': feature file not found"):
        check_feature_sources([a, str(tmp_path / "missing.tsv")])


def test_an_empty_feature_file_is_named_itself(tmp_path):
    """An empty TSV among the sources was only seen as a question's image without features (in the questions
    file); the file itself is named now."""
    rng = np.random.default_rng(0)
    write_official_tsv(tmp_path / "a.tsv", [random_image(rng, 1, 3, 8)])
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(DataError) as error:
        images_of_sources([tmp_path / "a.tsv", tmp_path / "empty.tsv"], {1}, progress=False)
    assert str(error.value) == f"{tmp_path / 'empty.tsv'}: holds no feature records (an empty file?)"


def test_a_pipe_is_left_to_the_conversion(tmp_path):
    """A pipe can be read once, by the conversion: no reading before it (None). (A writer feeds it, so that a
    reading would not block the test.)"""
    fifo = tmp_path / "features.tsv"
    os.mkfifo(fifo)
    threading.Thread(target=fifo.write_bytes, args=(_record(1, 2, 8),), daemon=True).start()
    assert images_of_sources([fifo], {1}, progress=False) is None
