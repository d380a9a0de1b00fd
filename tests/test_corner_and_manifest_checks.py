"""Input checks: a Flickr30k Entities box corner beyond ±65504 (the limit of every box and feature value, as for
detected boxes), a manifest ``num_tokens`` that is not dictionary.json's token count (text, a bool, 0, another count)
and a split's ``annotated`` or ``official_files`` that is not true or false are a DataError naming the file, the
record and the field, and nothing is written: no dataset, no run, and an earlier dataset in ``--out`` stays whole."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_flickr30k import annotation_xml, write_raw
from test_output_paths import snapshot
from test_prepared_consistency import NAMES, copy_of, edit_json, open_splits, prepared  # noqa: F401  (the fixture)

from ban.cli import main
from ban.data.flickr30k_parse import parse_annotation_file
from ban.data.flickr30k_prepare import prepare_flickr30k
from ban.data.prepared import read_tokens
from ban.engine.tasks import make_task
from ban.errors import DataError


def set_corner(xml: Path, corner: str, value: str) -> None:
    """Write ``value`` as the ``corner`` (xmin, ymin, xmax or ymax) of the first <object> of ``xml``."""
    text = xml.read_text(encoding="utf-8")
    xml.write_text(re.sub(f"<{corner}>[^<]*</{corner}>", f"<{corner}>{value}</{corner}>", text, count=1),
                   encoding="utf-8")


def corner_error(xml: Path, corner: str, value: str) -> str:
    """The error refusing ``value`` as the ``corner`` of the first <object> of ``xml``."""
    return f"{xml}: record <object> #1: field 'bndbox/{corner}': expected a pixel corner within ±65504, got {value!r}"


@pytest.mark.parametrize("value", ["99999999", "-65505", "7e4"])
@pytest.mark.parametrize("corner", ["xmin", "ymin", "xmax", "ymax"])
def test_a_box_corner_beyond_the_limit_is_refused_and_nothing_is_written(tmp_path: Path, corner: str,
                                                                         value: str) -> None:
    """A corner of 99999999 was accepted and moved the grounding upper bound."""
    features = write_raw(tmp_path / "raw")
    xml = tmp_path / "raw" / "Annotations" / "101.xml"
    set_corner(xml, corner, value)
    with pytest.raises(DataError) as caught:
        prepare_flickr30k(tmp_path / "raw", features, tmp_path / "out", progress=False)
    assert str(caught.value) == corner_error(xml, corner, value)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(xml), "<object> #1",
                                                                             f"bndbox/{corner}")
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_a_corner_beyond_the_limit_leaves_the_earlier_dataset_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    command = ["prepare", "flickr30k", "--root", str(tmp_path / "raw"), "--features", str(features[0]),
               "--out", str(out)]
    assert main(command) == 0
    before = snapshot(out)
    xml = tmp_path / "raw" / "Annotations" / "101.xml"
    set_corner(xml, "xmax", "99999999")
    capsys.readouterr()
    assert main(command) == 2
    assert corner_error(xml, "xmax", "99999999") in capsys.readouterr().err
    assert snapshot(out) == before


def test_corners_at_the_limit_or_a_little_past_the_image_are_kept(tmp_path: Path) -> None:
    """Real annotations can reach a pixel past the image (the parser does not compare corners with <size>), and
    ±65504 itself is within the limit."""
    xml = tmp_path / "1.xml"
    xml.write_text(annotation_xml(100, 80, [([1], (-1, 0, 101, 81)), ([2], (-65504, -65504.0, 65504, 65504.0))]),
                   encoding="utf-8")
    assert parse_annotation_file(xml).boxes == {1: [(-1.0, 0.0, 101.0, 81.0)],
                                                2: [(-65504.0, -65504.0, 65504.0, 65504.0)]}


@pytest.mark.parametrize(("token_count", "message"), [
    (str, "expected a positive integer, got '{count}'"),
    (lambda count: True, "expected a positive integer, got True"),
    (lambda count: 0, "expected a positive integer, got 0"),
    (float, "expected a positive integer, got {count}.0"),
    (lambda count: count + 1, "{more}, but dictionary.json has {count} tokens: the files of this dataset are not "
                              "of one preparation; prepare it again"),
], ids=["text", "bool", "zero", "float", "one more"])
@pytest.mark.parametrize("name", NAMES)
def test_a_manifest_token_count_other_than_the_dictionarys_is_refused(
        prepared: Path, tmp_path: Path, name: str,  # noqa: F811
        token_count: Callable[[int], object], message: str) -> None:
    """``"num_tokens": "50"`` was accepted: training ran, sized from dictionary.json, on a manifest that
    contradicted it."""
    data_dir = copy_of(prepared, name, tmp_path)
    count = len(read_tokens(data_dir))
    edit_json(data_dir / "manifest.json", lambda manifest: {**manifest, "num_tokens": token_count(count)})
    with pytest.raises(DataError) as caught:
        open_splits(data_dir)
    manifest = data_dir / "manifest.json"
    assert str(caught.value) == f"{manifest}: field 'num_tokens': " + message.format(count=count, more=count + 1)
    assert (caught.value.path, caught.value.record, caught.value.field) == (str(manifest), None, "num_tokens")


def test_training_on_a_manifest_with_a_text_token_count_writes_no_run(
        prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    data_dir = copy_of(prepared, "grounding", tmp_path)
    count = len(read_tokens(data_dir))
    edit_json(data_dir / "manifest.json", lambda manifest: {**manifest, "num_tokens": str(count)})
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--preset", "tiny-grounding", "--epochs", "1",
                 "--set", "device=cpu"]) == 2
    assert (f"{data_dir / 'manifest.json'}: field 'num_tokens': expected a positive integer, got '{count}'"
            in capsys.readouterr().err)
    assert not run.exists()


@pytest.mark.parametrize("annotated", ["false", 0, None])
def test_a_split_annotated_flag_that_is_not_true_or_false_is_refused(
        prepared: Path, tmp_path: Path, annotated: object) -> None:  # noqa: F811
    """``"annotated": "false"`` counted as annotated: a test split would have been trained or scored on zeros."""
    data_dir = copy_of(prepared, "vqa", tmp_path)
    edit_json(data_dir / "manifest.json", lambda manifest: {
        **manifest, "splits": {**manifest["splits"], "test-dev": {**manifest["splits"]["test-dev"],
                                                                  "annotated": annotated}}})
    with pytest.raises(DataError) as caught:
        open_splits(data_dir)
    assert str(caught.value) == (f"{data_dir / 'manifest.json'}: field 'splits/test-dev/annotated': expected true or "
                                 f"false, got {annotated!r}")


def test_a_split_official_files_flag_that_is_not_true_or_false_is_refused(
        prepared: Path, tmp_path: Path) -> None:  # noqa: F811
    """``"official_files": "false"`` counted as official: a Visual Genome split could be taken as val_split, to
    fail after the first epoch for want of its annotation file. Absent (datasets prepared before it): false."""
    data_dir = copy_of(prepared, "vqa", tmp_path)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    del manifest["splits"]["val"]["official_files"]
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    assert "val" not in make_task("vqa", data_dir).scored_splits()
    manifest["splits"]["val"]["official_files"] = "false"
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError) as caught:
        make_task("vqa", data_dir).scored_splits()
    assert str(caught.value) == (f"{data_dir / 'manifest.json'}: field 'splits/val/official_files': expected true "
                                 f"or false, got 'false'")
