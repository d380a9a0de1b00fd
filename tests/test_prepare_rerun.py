"""`ban prepare` run again over its own dataset: the finished conversion of the same TSV files is reused only when
it is whole and as asked (dtype, width); otherwise the files are converted again, and errors name the inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_data_features import write_official_tsv
from test_data_vqa2 import raw  # noqa: F401  (the fixture: official-format files, two TSV files)

from ban.data.vqa2 import prepare_vqa2
from ban.data.vqa_dataset import VQADataset
from ban.errors import DataError


def prepare(raw, **options):  # noqa: F811
    return prepare_vqa2(raw["root"], raw["features"], raw["out"], min_answer_count=1, progress=False, **options)


def stored(raw, name: str = "features") -> np.ndarray:  # noqa: F811
    return np.load(raw["out"] / "features" / f"{name}.npy")


def test_a_damaged_conversion_is_converted_again(raw, capsys) -> None:  # noqa: F811
    prepare(raw)
    expected = stored(raw)
    features = raw["out"] / "features" / "features.npy"
    with features.open("r+b") as handle:  # cut short: the previous dataset is damaged
        handle.truncate(features.stat().st_size // 2)
    prepare(raw)
    assert (f"ban prepare: the previous conversion in {raw['out'] / 'features'} cannot be reused (damaged or of an "
            f"older format: {features}); converting the TSV files again") in capsys.readouterr().err
    np.testing.assert_array_equal(stored(raw), expected)
    assert VQADataset(raw["out"], "val")[0]["question_id"] == 20


@pytest.mark.parametrize(("first", "second"), [("float16", "float32"), ("float32", "float16")])
def test_another_feature_dtype_is_converted_again(raw, first: str, second: str) -> None:  # noqa: F811
    prepare(raw, feature_dtype=first)
    assert stored(raw).dtype == np.dtype(first)
    prepare(raw, feature_dtype=second)
    assert json.loads((raw["out"] / "features" / "store.json").read_text())["dtype"] == second
    assert stored(raw).dtype == np.dtype(second)


def test_another_feature_width_names_the_tsv_file(raw) -> None:  # noqa: F811
    prepare(raw)
    width = stored(raw).shape[1]
    with pytest.raises(DataError) as error:
        prepare(raw, feature_dim=width + 1)
    assert str(raw["features"][0]) in str(error.value) and ".tmp" not in str(error.value)
    assert stored(raw).shape[1] == width  # the dataset is as it was


def test_a_tsv_rewritten_at_the_same_size_is_converted_again(raw) -> None:  # noqa: F811
    """The stamp in ``store.json`` holds the size and the modification time of each TSV file
    (``features_writer.source_stamps``): a file of the same size but a newer time is new content, so the store must
    hold the rewritten value (64.0, far outside the fixture's standard-normal features) and not the old one."""
    prepare(raw)
    assert not (stored(raw) == 64.0).any()
    test_tsv = raw["features"][1]
    before = test_tsv.stat()
    image = dict(raw["images"][5], features=raw["images"][5]["features"].copy())
    image["features"][0, 0] = 64.0
    write_official_tsv(test_tsv, [image])
    os.utime(test_tsv, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert test_tsv.stat().st_size == before.st_size  # float32 bytes in base64: one value rewritten, same length
    prepare(raw)
    assert (stored(raw) == 64.0).sum() == 1


def test_a_dataset_of_another_format_version_is_prepared_again_in_place(raw) -> None:  # noqa: F811
    """Reading it says "rerun `ban prepare`": the same --out must then be taken, not refused as not a dataset."""
    prepare(raw)
    manifest = json.loads((raw["out"] / "manifest.json").read_text())
    (raw["out"] / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(DataError, match="format version 0, expected 1"):
        VQADataset(raw["out"], "val")
    prepare(raw)
    assert json.loads((raw["out"] / "manifest.json").read_text())["format_version"] == 1
    assert VQADataset(raw["out"], "val")[0]["question_id"] == 20
