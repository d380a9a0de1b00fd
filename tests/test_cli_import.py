"""`ban import`: a checkpoint in the authors' format (with their answer-list and dictionary pickles) becomes a run
directory whose evaluation and predictions are those of the model that was saved."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import make_dataset

import ban
from ban.cli import main
from ban.data.prepared import read_answers, read_tokens
from ban.engine.run import load_run
from ban.engine.tasks import make_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), seed=2)


def _pickle(path: Path, value: object) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=2))  # as the reference's Python 2 scripts wrote them
    return path


def _reference_files(model: torch.nn.Module, answers: list[str], tokens: list[str], folder: Path,
                     seed: int = 0) -> tuple[Path, Path, Path]:
    """The authors' files for ``model`` (classifier rows in ``answers`` order): model_epoch12.pth with the rows in
    a shuffled answer order, that order as trainval_label2ans.pkl, and dictionary.pkl."""
    order = torch.randperm(len(answers), generator=torch.Generator().manual_seed(seed))
    shuffled = copy.deepcopy(model)
    with torch.no_grad():
        shuffled.classifier.output.weight_v.copy_(model.classifier.output.weight_v[order])
        shuffled.classifier.output.bias.copy_(model.classifier.output.bias[order])
    ban.save_official_checkpoint(shuffled, folder / "model_epoch12.pth")
    return (folder / "model_epoch12.pth", _pickle(folder / "trainval_label2ans.pkl", [answers[i] for i in order]),
            _pickle(folder / "dictionary.pkl", [{word: i for i, word in enumerate(tokens)}, tokens]))


def _vqa_model(data_dir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ban.BANConfig(num_tokens=len(read_tokens(data_dir)), num_answers=len(read_answers(data_dir)),
                           feature_dim=16, hidden_dim=16, word_dim=8, num_glimpses=2, use_counting=True,
                           two_word_tables=True)
    return ban.build_model(config).eval()


def test_an_imported_vqa_checkpoint_evaluates_and_predicts_as_the_saved_model(data_dir, tmp_path, capsys):
    model = _vqa_model(data_dir)
    checkpoint, answers, dictionary = _reference_files(model, read_answers(data_dir), read_tokens(data_dir), tmp_path)
    run_dir = tmp_path / "authors"
    assert main(["import", str(checkpoint), "--data", str(data_dir), "--answers", str(answers),
                 "--dictionary", str(dictionary), "--out", str(run_dir)]) == 0
    capsys.readouterr()

    imported = load_run(run_dir).model
    features, boxes = torch.rand(3, 12, 16), torch.rand(3, 12, 4).sort(dim=-1).values
    questions = torch.randint(0, model.config.num_tokens + 1, (3, 14))
    assert torch.equal(imported(features, boxes, questions).logits, model(features, boxes, questions).logits)
    assert main(["evaluate", str(run_dir), "--json"]) == 0  # fp32, as the reference computes
    expected = make_task("vqa", data_dir).evaluate(model, "val", 512, torch.device("cpu"), "fp32")
    assert json.loads(capsys.readouterr().out) == expected
    assert main(["predict", str(run_dir), "--out", str(tmp_path / "results.json")]) == 0
    assert len(json.loads((tmp_path / "results.json").read_text())) == len(
        json.loads((data_dir / "test-dev_questions.json").read_text())["questions"])

    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--checkpoint", "best"]) == 2
    assert f"no best checkpoint: its weights were imported from {checkpoint} (`ban import`)" in capsys.readouterr().err
    assert main(["visualize", str(run_dir), "--num", "1", "--out", str(tmp_path / "pictures")]) == 0
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 1
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--resume"]) == 2
    assert "(`ban import`): no training position or optimizer state to resume; train a new run" in (
        capsys.readouterr().err)
    assert main(["import", str(checkpoint), "--data", str(data_dir), "--answers", str(answers),
                 "--out", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_what_cannot_be_the_checkpoints_vocabulary_is_refused_by_name(data_dir, tmp_path, capsys):
    model = _vqa_model(data_dir)
    tokens, labels = read_tokens(data_dir), read_answers(data_dir)
    checkpoint, answers, dictionary = _reference_files(model, labels, tokens, tmp_path)
    importing = ["import", str(checkpoint), "--data", str(data_dir), "--out", str(tmp_path / "run")]
    swapped_tokens = [tokens[1], tokens[0], *tokens[2:]]
    swapped = _pickle(tmp_path / "swapped.pkl", [{w: i for i, w in enumerate(swapped_tokens)}, swapped_tokens])
    other_answer = _pickle(tmp_path / "other.pkl", ["not-an-answer", *pickle.loads(answers.read_bytes())[1:]])
    cases = [
        ([], "a VQA checkpoint needs --answers"),
        (["--answers", str(other_answer)], f"{data_dir / 'answers.json'}: other answers than the checkpoint's: 1 here "
                                           "not in other.pkl"),
        (["--answers", str(answers), "--dictionary", str(swapped)],
         f"{data_dir / 'dictionary.json'}: other token ids than {swapped} (id 0 is {tokens[0]!r} here, "
         f"{tokens[1]!r} there)"),
    ]
    for extra, message in cases:
        assert main([*importing, *extra]) == 2
        assert message in capsys.readouterr().err
    narrow = copy.deepcopy(model.config).replace(feature_dim=8)
    ban.save_official_checkpoint(ban.build_model(narrow), tmp_path / "narrow.pth")
    assert main(["import", str(tmp_path / "narrow.pth"), "--data", str(data_dir), "--answers", str(answers),
                 "--out", str(tmp_path / "run")]) == 2
    assert f"{data_dir / 'manifest.json'}: field 'feature_dim': its features are 16-d; the run's model reads 8-d" in (
        capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_imported_grounding_checkpoint_evaluates_as_the_saved_model(tmp_path, capsys):
    from ban.data.flickr30k_prepare import prepare_flickr30k
    from ban.data.synthetic import generate

    generate(tmp_path / "raw", seed=1, num_images=10, feature_dim=16, flickr_images=40, write_images=False,
             workers=1, progress=False)
    flickr = tmp_path / "raw" / "flickr30k"
    data_dir = tmp_path / "prepared"
    prepare_flickr30k(flickr, [flickr / "features.tsv"], data_dir, progress=False)
    torch.manual_seed(0)
    config = ban.BANConfig(task="grounding", num_tokens=len(read_tokens(data_dir)), feature_dim=16, hidden_dim=16,
                           word_dim=8, num_glimpses=1, use_counting=False)
    model = ban.build_model(config).eval()
    ban.save_official_checkpoint(model, tmp_path / "flickr.pth")
    vqa_answers = _pickle(tmp_path / "label2ans.pkl", ["yes"])
    assert main(["import", str(tmp_path / "flickr.pth"), "--data", str(data_dir), "--answers", str(vqa_answers),
                 "--out", str(tmp_path / "run")]) == 2
    assert "--answers is for VQA checkpoints" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "flickr.pth"), "--data", str(data_dir), "--out", str(tmp_path / "run")]) == 0
    note = ("note: the authors' Flickr30k model was trained with the reference's entity positions; "
            f"{data_dir} was prepared with `--entity-positions tokens`: for their outputs, prepare it again with "
            "`ban prepare flickr30k … --entity-positions reference`")
    assert capsys.readouterr().err.strip() == note  # one note, not an error
    assert main(["evaluate", str(tmp_path / "run"), "--split", "test", "--json"]) == 0
    expected = make_task("grounding", data_dir).evaluate(model, "test", 512, torch.device("cpu"), "fp32")
    assert json.loads(capsys.readouterr().out) == expected

    # prepared for the authors' model: no note; its evaluation is the saved model's on those positions
    reference_dir = tmp_path / "reference"
    prepare_flickr30k(flickr, [data_dir / "features"], reference_dir, entity_positions="reference", progress=False)
    assert main(["import", str(tmp_path / "flickr.pth"), "--data", str(reference_dir), "--out",
                 str(tmp_path / "authors")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["evaluate", str(tmp_path / "authors"), "--split", "test", "--json"]) == 0
    expected = make_task("grounding", reference_dir).evaluate(model, "test", 512, torch.device("cpu"), "fp32")
    assert json.loads(capsys.readouterr().out) == expected

    # a dataset prepared before the choice existed has ban's positions
    manifest = json.loads((data_dir / "manifest.json").read_text())
    del manifest["entity_positions"]
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["import", str(tmp_path / "flickr.pth"), "--data", str(data_dir), "--out", str(tmp_path / "old")]) == 0
    assert capsys.readouterr().err.strip() == note

    # a value no version writes: refused, naming the file and field, before the run is written
    manifest["entity_positions"] = "Reference"
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["import", str(tmp_path / "flickr.pth"), "--data", str(data_dir), "--out", str(tmp_path / "bad")]) == 2
    assert (f"{data_dir / 'manifest.json'}: field 'entity_positions': expected 'tokens' or 'reference', got "
            "'Reference'") in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
