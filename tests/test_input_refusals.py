"""Bad input refused by name, earlier outputs kept: an empty --dictionary, a GloVe file of none of the words, an
integer setting beyond int64, a damaged metrics.jsonl on resume, `ban import` of a folder or into a run."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import ban
from ban.cli import main
from ban.data.dictionary import Dictionary
from ban.data.flickr30k_prepare import prepare_flickr30k
from ban.data.glove import read_glove
from ban.data.prepared import read_answers, read_tokens
from ban.data.synthetic import generate
from ban.data.vqa2 import prepare_vqa2
from ban.engine.config import TrainConfig, apply_overrides
from ban.engine.reporting import METRICS_FILE, report_resumed
from ban.errors import CheckpointError, ConfigError, DataError

SMALL = ["--preset", "tiny", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", "batch_size=16"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Synthetic VQA 2.0 (24 images) and Flickr30k Entities (10 images) files with 16-d features."""
    root = tmp_path_factory.mktemp("raw")
    generate(root, seed=3, num_images=24, feature_dim=16, flickr_images=10, questions_per_image=2,
             write_images=False, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def vqa_data(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vqa") / "prepared"
    prepare_vqa2(raw / "vqa", sorted((raw / "features").glob("*.tsv")), out, min_answer_count=1, progress=False)
    return out


@pytest.fixture(scope="module")
def flickr_data(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flickr") / "prepared"
    prepare_flickr30k(raw / "flickr30k", [raw / "flickr30k" / "features.tsv"], out, progress=False)
    return out


def _prepare_flickr(raw: Path, flickr_data: Path, out: Path, *options: str) -> int:
    """`ban prepare flickr30k` of the raw captions with the prepared features, into ``out``."""
    return main(["prepare", "flickr30k", "--root", str(raw / "flickr30k"), "--features", str(flickr_data / "features"),
                 "--out", str(out), "--json", *options])


# --- 1. --dictionary ---------------------------------------------------------------------------------------------


def test_an_empty_dictionary_is_refused_by_name(raw, flickr_data, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"tokens": []}')
    with pytest.raises(DataError, match="empty") as caught:
        Dictionary.load(empty)
    assert (caught.value.path, caught.value.field) == (str(empty), "tokens")
    assert _prepare_flickr(raw, flickr_data, tmp_path / "out", "--dictionary", str(empty)) == 2
    assert f"{empty}: field 'tokens': empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_dictionary_that_knows_few_caption_words_is_warned_about(raw, flickr_data, tmp_path, capsys) -> None:
    """Every word it does not know is encoded as its last token: a warning on stderr names the share and the most
    frequent of them; the captions' own dictionary gets none."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text('{"tokens": ["a"]}')
    assert _prepare_flickr(raw, flickr_data, tmp_path / "tiny", "--dictionary", str(tiny)) == 0
    err = capsys.readouterr().err
    assert "ban: warning: the given dictionary does not know" in err and "of the caption words" in err
    assert "encoded as its last token ('a')" in err
    assert _prepare_flickr(raw, flickr_data, tmp_path / "own", "--dictionary",
                           str(flickr_data / "dictionary.json")) == 0
    assert "warning" not in capsys.readouterr().err


# --- 2. GloVe ------------------------------------------------------------------------------------------------------


def test_a_glove_file_of_none_of_the_words_is_refused_and_the_dataset_kept(raw, vqa_data, flickr_data, tmp_path,
                                                                          capsys) -> None:
    glove = tmp_path / "other.txt"
    glove.write_text("foo 1 2 3\nbar 4 5 6\n")
    out = tmp_path / "vqa"
    shutil.copytree(vqa_data, out)
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="none of the .* words looked up is in it") as caught:
        prepare_vqa2(raw / "vqa", [vqa_data / "features"], out, glove=glove, min_answer_count=1, progress=False)
    assert (caught.value.path, caught.value.field) == (str(glove), "glove")
    assert (out / "manifest.json").read_bytes() == manifest and not (out / "glove.npy").exists()
    assert _prepare_flickr(raw, flickr_data, tmp_path / "flickr", "--glove", str(glove)) == 2
    assert f"{glove}: field 'glove': none of the" in capsys.readouterr().err
    assert not (tmp_path / "flickr").exists()


def test_the_glove_coverage_is_reported(raw, vqa_data, flickr_data, tmp_path, capsys) -> None:
    """How many of the words looked up the GloVe file holds: on stderr, and in the manifest."""
    tokens = read_tokens(vqa_data)
    glove = tmp_path / "glove.txt"
    glove.write_text("zebra 9 9 9\n" + "".join(f"{word} 1 2 3\n" for word in tokens[:3]))
    manifest = prepare_vqa2(raw / "vqa", [vqa_data / "features"], tmp_path / "vqa", glove=glove, min_answer_count=1,
                            progress=False)
    assert manifest["glove_coverage"] == {"found": 3, "words": len(tokens)}  # no Visual Genome: the dictionary's
    assert f"ban: GloVe ({glove}) has vectors for 3 of the {len(tokens)} words" in capsys.readouterr().err
    assert _prepare_flickr(raw, flickr_data, tmp_path / "flickr", "--glove", str(glove)) == 0
    flickr_tokens = read_tokens(tmp_path / "flickr")
    found = len(set(tokens[:3]) & set(flickr_tokens))
    assert found and json.loads(capsys.readouterr().out)["glove_coverage"] == {"found": found,
                                                                               "words": len(flickr_tokens)}


def test_a_glove_value_beyond_float32_gives_only_the_clear_error(tmp_path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("the 1 2 3\ncat 1 1e39 3\n")
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="'cat': value 2 of 3 is '1e39', not a finite float32") as caught:
            read_glove(glove, ["cat"], progress=False)
    assert caught.value.path == str(glove) and caught.value.record == "line 2"
    assert [str(warning.message) for warning in caught_warnings] == []


# --- 3. integer settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "value"), [("seed", "99999999999999999999999"), ("seed", str(-(2**63) - 1)),
                                                ("batch_size", "99999999999999999999"),
                                                ("decay_epochs", "10,99999999999999999999")])
def test_an_integer_setting_beyond_int64_is_refused_by_name(setting, value) -> None:
    with pytest.raises(ConfigError, match=f"training setting '{setting}': .* does not fit a 64-bit integer"):
        apply_overrides(TrainConfig(), {setting: value})


def test_the_int64_limits_are_accepted() -> None:
    """torch.manual_seed takes them, and seed + epoch / seed + rank too (its range reaches 2**64 - 1)."""
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1 and TrainConfig(seed=-(2**63)).seed == -(2**63)
    torch.manual_seed(2**63 - 1 + 100)


def test_ban_train_names_a_seed_beyond_int64(vqa_data, tmp_path, capsys) -> None:
    assert main(["train", "--data", str(vqa_data), "--out", str(tmp_path / "run"), "--epochs", "1", *SMALL,
                 "--set", "seed=99999999999999999999999"]) == 2
    assert "training setting 'seed': 99999999999999999999999 does not fit a 64-bit integer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- 4. resuming with a damaged metrics.jsonl ----------------------------------------------------------------------


def test_a_metrics_file_that_is_not_utf8_is_counted_not_decoded(tmp_path) -> None:
    history = [{"epoch": 1, "train_loss": 1.0, "train_score": 10.0}]
    damaged = b"\xff\xfe not UTF-8\n"
    (tmp_path / METRICS_FILE).write_bytes(damaged)  # as many lines as epochs: left as it is
    report_resumed(tmp_path, history)
    assert (tmp_path / METRICS_FILE).read_bytes() == damaged


def test_resuming_a_run_whose_metrics_file_is_damaged(vqa_data, tmp_path, capsys) -> None:
    """A non-UTF-8 metrics.jsonl shorter than the checkpoint's history is rewritten from it on --resume."""
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(vqa_data), "--out", str(run_dir), "--epochs", "1", *SMALL]) == 0
    written = (run_dir / METRICS_FILE).read_text(encoding="utf-8")
    (run_dir / METRICS_FILE).write_bytes(b"\xff\xfe")  # no whole line: one epoch short
    assert main(["train", "--out", str(run_dir), "--resume"]) == 0
    assert (run_dir / METRICS_FILE).read_text(encoding="utf-8") == written


# --- 5. ban import -------------------------------------------------------------------------------------------------


def test_ban_import_names_a_folder_and_a_taken_run_dir_in_its_own_words(vqa_data, tmp_path, capsys) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="a directory, not a checkpoint file") as caught:
        ban.load_official_checkpoint(folder)
    assert caught.value.path == str(folder)
    run_dir = tmp_path / "run"
    common = ["--data", str(vqa_data), "--out", str(run_dir)]
    assert main(["import", str(folder), *common]) == 2
    assert f"{folder}: a directory, not a checkpoint file" in capsys.readouterr().err

    torch.manual_seed(0)
    answers = read_answers(vqa_data)
    config = ban.BANConfig(num_tokens=len(read_tokens(vqa_data)), num_answers=len(answers), feature_dim=16,
                           hidden_dim=16, word_dim=8, num_glimpses=1)
    ban.save_official_checkpoint(ban.build_model(config), tmp_path / "model_epoch12.pth")
    (tmp_path / "label2ans.pkl").write_bytes(pickle.dumps(answers, protocol=2))
    arguments = ["import", str(tmp_path / "model_epoch12.pth"), "--answers", str(tmp_path / "label2ans.pkl"), *common]
    assert main(arguments) == 0
    config_json = (run_dir / "config.json").read_bytes()
    capsys.readouterr()
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert f"{run_dir} already holds a run; choose another --out" in err and "--resume" not in err
    assert (run_dir / "config.json").read_bytes() == config_json
    assert main(["train", "--data", str(vqa_data), "--out", str(run_dir), "--epochs", "1", *SMALL]) == 2
    assert "already holds a run; continue it with --resume or choose another --out" in capsys.readouterr().err


def test_ban_import_names_an_answer_the_reference_list_repeats(vqa_data, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    answers = read_answers(vqa_data)
    config = ban.BANConfig(num_tokens=len(read_tokens(vqa_data)), num_answers=len(answers), feature_dim=16,
                           hidden_dim=16, word_dim=8, num_glimpses=1)
    ban.save_official_checkpoint(ban.build_model(config), tmp_path / "model_epoch12.pth")
    rows = tmp_path / "label2ans.pkl"
    rows.write_bytes(pickle.dumps([*answers[:-1], answers[0]], protocol=2))  # as many rows, one answer twice
    assert main(["import", str(tmp_path / "model_epoch12.pth"), "--answers", str(rows), "--data", str(vqa_data),
                 "--out", str(tmp_path / "run")]) == 2
    assert (f"{rows}: record entry {len(answers) - 1}: answer {answers[0]!r} is listed twice (also entry 0): each "
            "classifier row answers one candidate") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
