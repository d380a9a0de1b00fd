"""`kill -9` during `ban prepare vqa2`: nothing half-written carries a final name, the dataset never looks
complete, and running the same command again gives exactly the dataset an uninterrupted run gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_reliability_kill import KILLER, environment

from ban.data.features import FeatureStore
from ban.data.synthetic import generate
from ban.data.vqa2 import prepare_vqa2


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(root, seed=6, num_images=24, feature_dim=8, flickr_images=0, write_images=False, workers=1,
             progress=False)
    return root


def tsv_files(raw: Path) -> list[Path]:
    return sorted((raw / "features").glob("*.tsv"))


def assert_nothing_half_written(out: Path) -> None:
    """Every file under its final name is whole; without manifest.json the dataset does not claim to be done."""
    assert not (out / "manifest.json").exists()
    for path in out.iterdir():
        if path.name.startswith("."):
            continue  # a hidden temporary left by the kill
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                [archive[name] for name in archive.files]
        elif path.is_dir():
            FeatureStore.open(path)  # a store directory appears only when complete


def contents(out: Path) -> dict[str, object]:
    """Everything a prepared dir holds, comparable across runs (absolute paths of sources aside)."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        name = str(path.relative_to(out))
        hidden = any(part.startswith(".") for part in path.relative_to(out).parts)
        if hidden or path.is_dir() or name in ("features.json", "features/store.json"):
            continue
        if path.suffix == ".npz":
            with np.load(path) as archive:
                found[name] = {key: archive[key].tolist() for key in archive.files}
        else:
            found[name] = path.read_bytes()
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["replace:features:1:before", "replace:manifest.json:1:before"])
def test_killed_prepare_leaves_no_half_file_and_reruns_to_the_same_dataset(raw, tmp_path, kill_at):
    reference, out = tmp_path / "reference", tmp_path / "out"
    prepare_vqa2(raw / "vqa", tsv_files(raw), reference, progress=False)
    command = [sys.executable, "-c", KILLER, "prepare", "vqa2", "--root", str(raw / "vqa"), "--features",
               *map(str, tsv_files(raw)), "--out", str(out)]
    result = subprocess.run(command, env=environment(KILL_AT=kill_at), capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert_nothing_half_written(out)

    prepare_vqa2(raw / "vqa", tsv_files(raw), out, progress=False)  # the same command again
    assert (out / "manifest.json").exists()
    assert contents(out) == contents(reference)
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # the kill's leftovers are gone
