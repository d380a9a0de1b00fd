"""`kill -9` during `ban prepare vqa2`: nothing half-written carries a final name, the dataset never looks
complete, and running the same command again gives exactly the dataset an uninterrupted run gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_flickr30k import write_raw
from test_reliability_kill import KILLER, environment

from ban.cli import main
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
    for path in out.iterdir() if out.exists() else ():
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
    assert not hidden_files(tmp_path)  # the kill's leftovers are gone


def test_ctrl_c_during_prepare_says_so_in_one_line_and_keeps_the_previous_dataset(raw, prepared, tmp_path):
    """SIGINT while the features stream in from a pipe: exit 130, one line naming the command (no traceback), the
    previous dataset as it was and no temporary left."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    previous = contents(out)
    pipe = tmp_path / "features.fifo"
    os.mkfifo(pipe)
    command = [sys.executable, "-m", "ban.cli", "prepare", "vqa2", "--root", str(raw / "vqa"), "--features",
               *map(str, tsv_files(raw)[1:]), str(pipe), "--out", str(out)]
    # as typed in a terminal: SIGINT at its default (a test run in the background inherits it ignored)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    with open(pipe, "wb") as writer:  # opens once the command opens the pipe to read it
        writer.write(tsv_files(raw)[0].read_bytes())
        writer.flush()
        deadline = time.monotonic() + 60
        while not any(path.name.startswith(".out.tmp-") for path in tmp_path.iterdir()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)  # reading the pipe, which stays open
        process.send_signal(signal.SIGINT)
        error = process.communicate(timeout=60)[1]
    assert process.returncode == 130, error
    assert error.strip().splitlines()[-1] == "ban prepare: interrupted"
    assert "Traceback" not in error
    assert contents(out) == previous
    assert not hidden_files(tmp_path)


@pytest.mark.slow
def test_killed_prepare_leaves_the_previous_dataset_whole(raw, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    prepare_vqa2(raw / "vqa", tsv_files(raw), reference, progress=False)
    prepare_vqa2(raw / "vqa", tsv_files(raw), out, min_answer_count=1, progress=False)  # the previous dataset
    previous = contents(out)
    assert previous != contents(reference)
    command = [sys.executable, "-c", KILLER, "prepare", "vqa2", "--root", str(raw / "vqa"), "--features",
               *map(str, tsv_files(raw)), "--out", str(out)]
    result = subprocess.run(command, env=environment(KILL_AT="replace:manifest.json:1:before"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert contents(out) == previous

    prepare_vqa2(raw / "vqa", tsv_files(raw), out, progress=False)  # the same command again
    assert contents(out) == contents(reference)
    assert not hidden_files(tmp_path)


def hidden_files(folder: Path) -> list[str]:
    """Hidden temporaries anywhere under ``folder``."""
    return [str(path) for path in folder.rglob(".*")]


# --- `ban prepare` replaces its --out as a whole: only an earlier dataset of the same kind, no input inside --------


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_vqa2(raw / "vqa", tsv_files(raw), out, progress=False)
    return out


def vqa_command(raw: Path, out: Path, root: Path | None = None, features: list[Path] | None = None) -> list[str]:
    return ["prepare", "vqa2", "--root", str(root or raw / "vqa"), "--features",
            *map(str, features or tsv_files(raw)), "--out", str(out)]


def flickr_command(root: Path, features: Path, out: Path) -> list[str]:
    return ["prepare", "flickr30k", "--root", str(root), "--features", str(features), "--out", str(out)]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("problem", ["missing feature file", "questions not JSON"])
def test_a_refused_vqa_prepare_leaves_the_previous_dataset_whole(raw, prepared, tmp_path, capsys, problem):
    out, root, features = tmp_path / "data", tmp_path / "vqa", tsv_files(raw)
    shutil.copytree(prepared, out)
    shutil.copytree(raw / "vqa", root)
    if problem == "missing feature file":
        features = [tmp_path / "nope.tsv"]
        message = "nope.tsv: field 'features': feature file not found"
    else:
        (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text('{"questions": [')
        message = "v2_OpenEnded_mscoco_val2014_questions.json"
    before = files(out)
    assert main(vqa_command(raw, out, root, features)) == 2
    assert message in capsys.readouterr().err
    assert files(out) == before
    assert not hidden_files(tmp_path)


@pytest.mark.parametrize("option", ["features", "root"])
def test_a_vqa_input_inside_out_is_refused(raw, tmp_path, capsys, option):
    out = tmp_path / "prep_in"
    shutil.copytree(raw / "features", out / "features")
    shutil.copytree(raw / "vqa", out / "vqa")
    before = files(out)
    features = sorted((out / "features").glob("*.tsv")) if option == "features" else None
    root = out / "vqa" if option == "root" else None
    assert main(vqa_command(raw, out, root, features)) == 2
    assert f"field '{option}': lies inside --out, which is replaced" in capsys.readouterr().err
    assert files(out) == before


def test_a_flickr_root_inside_out_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    features = write_raw(out / "raw")[0].rename(tmp_path / "features.tsv")  # only the root inside
    before = files(out)
    assert main(flickr_command(out / "raw", features, out)) == 2
    assert "field 'root': lies inside --out, which is replaced" in capsys.readouterr().err
    assert files(out) == before


@pytest.mark.parametrize("dataset", ["vqa2", "flickr30k"])
@pytest.mark.parametrize("held", ["notes", "other dataset", "run"])
def test_prepare_refuses_an_out_holding_anything_but_its_own_kind_of_dataset(raw, tmp_path, capsys, dataset, held):
    out = tmp_path / "out"
    out.mkdir()
    if held == "notes":
        (out / "notes.txt").write_text("mine")
    elif held == "other dataset":
        (out / "manifest.json").write_text(json.dumps({"task": "grounding" if dataset == "vqa2" else "vqa2"}))
    else:
        (out / "config.json").write_text("{}")
        (out / "checkpoint.safetensors").write_bytes(b"weights")
    before = files(out)
    command = vqa_command(raw, out) if dataset == "vqa2" else flickr_command(tmp_path / "raw",
                                                                              *write_raw(tmp_path / "raw"), out)
    assert main(command) == 2
    assert "is not empty and is not a prepared" in capsys.readouterr().err
    assert files(out) == before


def test_prepare_replaces_an_earlier_dataset_of_its_kind(raw, prepared, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(prepared, out)
    (out / "vg-train.npz").write_bytes(b"stale")  # a split the new dataset does not have goes with the old one
    assert main(vqa_command(raw, out)) == 0
    assert not (out / "vg-train.npz").exists()
    assert contents(out) == contents(prepared)
    flickr = tmp_path / "flickr"
    command = flickr_command(tmp_path / "raw", *write_raw(tmp_path / "raw"), flickr)
    assert main(command) == 0
    assert main(command) == 0
    assert json.loads((flickr / "manifest.json").read_text())["task"] == "grounding"


def test_a_symlinked_out_keeps_its_link(raw, prepared, tmp_path):
    real, link = tmp_path / "disk" / "data", tmp_path / "data"
    shutil.copytree(prepared, real)
    link.symlink_to(real)
    assert main(vqa_command(raw, link, features=tsv_files(raw)) + ["--min-answer-count", "1"]) == 0
    assert link.is_symlink() and json.loads((real / "manifest.json").read_text())["min_answer_count"] == 1
