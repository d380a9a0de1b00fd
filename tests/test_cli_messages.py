"""What the `ban` commands say to a user who gave them the wrong thing, and what their help says."""

from __future__ import annotations

import importlib.metadata
import json
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ban
from ban.cli import main
from ban.data.features import FeatureStore
from ban.data.synthetic import generate
from ban.data.vqa2 import prepare_vqa2
from ban.engine.ablation import check_output
from ban.errors import CheckpointError, DataError

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """`ban synth` output: raw/vqa, raw/features/*.tsv and raw/flickr30k."""
    root = tmp_path_factory.mktemp("messages") / "raw"
    generate(root, seed=0, num_images=24, feature_dim=16, flickr_images=10, write_images=False, workers=1,
             progress=False)
    return root


@pytest.fixture(scope="module")
def prepared(raw) -> Path:
    out = raw.parent / "prepared"
    prepare_vqa2(raw / "vqa", sorted((raw / "features").glob("*.tsv")), out, min_answer_count=1, progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(prepared) -> Path:
    out = prepared.parent / "run"
    assert main(["train", "--data", str(prepared), "--out", str(out), "--preset", "tiny", "--epochs", "1",
                 "--set", "device=cpu", "--set", "batch_size=8", "--set", "model.hidden_dim=16",
                 "--set", "model.word_dim=8"]) == 0
    return out


def error_of(capsys, argv: list[str]) -> str:
    """The stderr of a `ban` command that must fail with a clear error (exit status 2)."""
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def help_of(capsys, argv: list[str]) -> str:
    """The ``--help`` text of a command, its line wrapping undone."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def prepare_vqa2_command(raw: Path, out: Path, features: list[Path] | None = None, root: Path | None = None
                         ) -> list[str]:
    features = features or sorted((raw / "features").glob("*.tsv"))
    return ["prepare", "vqa2", "--root", str(root or raw / "vqa"), "--features", *map(str, features), "--out",
            str(out), "--min-answer-count", "1"]


def test_import_of_a_file_that_is_not_a_checkpoint_says_so_in_one_line(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text('[{"question_id": 1, "answer": "yes"}]')
    error = error_of(capsys, ["import", str(results), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert error == (f"ban import: error: {results}: not a readable PyTorch checkpoint (not a file of torch.save, "
                     "or a damaged one)\n")


def test_a_plain_pickle_given_as_checkpoint_says_so_in_one_line_without_torchs_warning(tmp_path, capsys):
    """The answer list's .pkl given as the checkpoint by mistake: torch warns about its pickle protocol before
    refusing it; the user sees only ban's line."""
    answers = tmp_path / "trainval_label2ans.pkl"
    answers.write_bytes(pickle.dumps(["yes", "no"], protocol=4))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        error = error_of(capsys, ["import", str(answers), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert [str(warning.message) for warning in shown] == []
    assert error == (f"ban import: error: {answers}: not a readable PyTorch checkpoint (not a file of torch.save, "
                     "or a damaged one)\n")


def test_a_checkpoint_pickling_other_objects_names_them_in_one_line(tmp_path):
    path = tmp_path / "numpy.pth"
    torch.save({"model_state": {"w": np.zeros(3)}}, path)
    with pytest.raises(CheckpointError) as caught:
        ban.load_official_checkpoint(path)
    message = str(caught.value)
    assert re.fullmatch(rf"{re.escape(str(path))}: not a readable PyTorch checkpoint: it pickles numpy\S+, not only "
                        r"tensors \(not unpickled here: that could run code\)", message), message


def test_a_json_given_as_features_is_said_to_be_read_as_a_listing(raw, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text("{}")
    error = error_of(capsys, prepare_vqa2_command(raw, tmp_path / "out", [results]))
    assert f"{results}: field 'sources': expected a non-empty list of paths: a .json is read as a features.json " \
           "listing" in error
    assert "a store directory written by `ban prepare`, an .hdf5/.h5 cache or a features.json listing, or (for " \
           "`ban prepare --features`) a bottom-up TSV file" in error


def test_a_folder_given_as_features_that_is_no_store_is_not_told_to_rerun_prepare(raw, capsys, tmp_path):
    error = error_of(capsys, prepare_vqa2_command(raw, tmp_path / "out", [raw / "features"]))  # the TSV files' folder
    assert f"{raw / 'features'}: not a feature store (neither store.json nor features.json in it); a feature " \
           "source is a store directory written by `ban prepare`" in error
    assert "bottom-up TSV file" in error and "rerun" not in error


def test_a_store_that_lost_its_store_json_is_still_told_to_rerun_prepare(prepared, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "features.npy").write_bytes((prepared / "features" / "features.npy").read_bytes())
    with pytest.raises(DataError, match=r"not a complete feature store \(no store.json\): rerun `ban prepare`"):
        FeatureStore.open(store)


def test_prepare_features_help_names_every_kind_of_source(capsys):
    text = help_of(capsys, ["prepare", "vqa2"])
    assert "bottom-up TSV files" in text and "HDF5 caches" in text
    assert "feature store directories written by `ban prepare` / features.json listings of such sources" in text


def test_evaluate_of_a_missing_directory_says_there_is_none(tmp_path, capsys):
    missing = tmp_path / "nonexist"
    assert error_of(capsys, ["evaluate", str(missing)]) == f"ban evaluate: error: {missing}: no such directory\n"
    assert f"{tmp_path} is not a run directory (no config.json)" in error_of(capsys, ["evaluate", str(tmp_path)])


@pytest.mark.parametrize("held", ["notes", "file", "under a file"])
def test_prepare_names_out_as_the_option(raw, tmp_path, capsys, held):
    out = tmp_path / "d1"
    if held == "notes":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        message = f"{out}: --out is not empty and is not a prepared vqa2 dataset (no manifest.json with \"task\": " \
                  "\"vqa2\"); it is replaced as a whole: choose a new or empty directory"
    elif held == "file":
        out.write_text("mine")
        message = f"{out}: --out exists and is not a directory"
    else:
        out.write_text("mine")
        message = f"{out}: exists and is not a directory, and --out {out / 'sub' / 'data'} lies under it"
        out = out / "sub" / "data"
    error = error_of(capsys, prepare_vqa2_command(raw, out))
    assert message in error and "field 'out'" not in error and "Traceback" not in error
    if held != "notes":
        assert (tmp_path / "d1").read_text() == "mine"


def test_prepare_flickr30k_points_at_the_folder_ban_synth_wrote(raw, tmp_path, capsys):
    error = error_of(capsys, ["prepare", "flickr30k", "--root", str(raw), "--features",
                              str(raw / "flickr30k" / "features.tsv"), "--out", str(tmp_path / "out")])
    nested = raw / "flickr30k"
    assert f"{raw / 'train.txt'}: split list not found; they are in {nested}: give --root {nested}" in error
    error = error_of(capsys, prepare_vqa2_command(raw, tmp_path / "out", root=raw))  # vqa2's, the same helper's
    assert f"they are in {raw / 'vqa'}: give --root {raw / 'vqa'}" in error


def test_prepare_flickr30k_gives_no_hint_where_there_is_nothing_to_point_at(raw, tmp_path, capsys):
    error = error_of(capsys, ["prepare", "flickr30k", "--root", str(tmp_path), "--features",
                              str(raw / "flickr30k" / "features.tsv"), "--out", str(tmp_path / "out")])
    assert error.endswith(f"{tmp_path / 'train.txt'}: split list not found\n")


@pytest.mark.slow
def test_visualize_names_the_split_that_lacks_the_questions(run_dir, capsys):
    error = error_of(capsys, ["visualize", str(run_dir), "--questions", "1", "--split", "val"])
    assert "val.npz: field 'question_id': question ids [1] are not in this split" in error


@pytest.mark.slow
def test_every_number_evaluate_prints_is_explained_in_the_docs(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    text = (DOCS / "training.md").read_text(encoding="utf-8").split("## Validation numbers", 1)[1]
    for key in metrics:
        assert f"`{key}`" in text, key
    assert "`recall@1`" in text and "`perType`" in text  # grounding's


def test_ablate_refuses_an_out_holding_other_files_before_anything_runs(prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BAN_CACHE", str(tmp_path / "cache"))
    before = sorted(path.name for path in prepared.iterdir())
    error = error_of(capsys, ["ablate", "--out", str(prepared), "--seeds", "1", "--glimpses", "1", "--epochs", "1",
                              "--images", "20"])
    assert f"{prepared}: --out holds answers.json, dictionary.json, features, …, which no ablation writes: give a " \
           "new or empty folder, or an earlier ablation's to continue it" in error
    assert sorted(path.name for path in prepared.iterdir()) == before
    assert not (tmp_path / "cache").exists()  # refused before the synthetic scenes were made


def test_ablate_takes_a_new_or_empty_folder_or_its_own(tmp_path):
    check_output(tmp_path / "new")
    check_output(tmp_path)
    (tmp_path / "runs").mkdir()  # an interrupted ablation: its runs only
    check_output(tmp_path)
    for name in ("ablation.json", "ablation.md", ".ablation.json.tmp-123", ".DS_Store"):
        (tmp_path / name).write_text("")
    check_output(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"--out holds notes.txt, which no ablation writes"):
        check_output(tmp_path)


def test_synth_help_and_docs_say_what_flickr_images_takes(tmp_path, capsys):
    assert "must be 0 or at least 10, got 5" in error_of(capsys, ["synth", "--out", str(tmp_path / "s"),
                                                                  "--flickr-images", "5"])
    text = help_of(capsys, ["synth"])
    assert "0 (none) or at least 10 (default max(10, 0.384 × --images))" in text
    assert "5 : 1.25 : 0.75, at least 10 (default 2800)" in text
    assert "0 for none, else at least 10" in " ".join((DOCS / "synthetic.md").read_text(encoding="utf-8").split())


def test_ablate_device_help_gives_its_default(capsys):
    assert "auto (CUDA if available), cpu, cuda, … (default: auto)" in help_of(capsys, ["ablate"])


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"ban {ban.__version__}\n"
    assert ban.__version__ == importlib.metadata.version("bilinear-attention-networks")


def test_python_dash_m_ban_is_the_ban_command(run_dir):
    """``python -m ban`` (scripts not on PATH) runs the same command line, under the same name."""
    helped = subprocess.run([sys.executable, "-m", "ban", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ban "), helped.stderr[-2000:]
    failed = subprocess.run([sys.executable, "-m", "ban", "evaluate", str(run_dir), "--split", "nowhere"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("ban evaluate: error: "), failed.stderr[-2000:]


def test_ctrl_c_while_the_commands_load_is_one_line(monkeypatch, capsys):
    """Loading every command's module takes a second or two, before a command's own handling of Ctrl-C: it was a
    traceback from inside an import."""
    import ban.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(ban.cli, "build_parser", interrupted)
    assert main(["synth", "--help"]) == 130
    assert capsys.readouterr().err == "ban: interrupted\n"
