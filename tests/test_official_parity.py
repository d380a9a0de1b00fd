"""The authors' checkpoints, loaded by us, give the authors' outputs (fixtures made by running their code)."""

from __future__ import annotations

import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

import ban
from ban.errors import CheckpointError, DataError
from ban.official import infer_config

TOLERANCE = 1e-5


def _io(fixtures, name):
    data = np.load(fixtures / f"{name}_io.npz")
    return {key: torch.from_numpy(data[key]) for key in data.files}


def test_vqa_checkpoint_reproduces_reference_logits_and_attention(official_fixtures):
    model = ban.load_official_checkpoint(official_fixtures / "ban_vqa_g4_h32_c.pth").eval()
    io = _io(official_fixtures, "ban_vqa_g4_h32_c")
    assert model.config.two_word_tables and model.config.num_glimpses == 4 and model.config.hidden_dim == 32
    with torch.no_grad():
        out = model(io["v"], io["b"], io["q"])
    assert out.logits.shape == io["logits"].shape
    assert (out.logits - io["logits"]).abs().max() <= TOLERANCE
    assert (out.attention - io["attention"]).abs().max() <= TOLERANCE


def test_grounding_checkpoint_reproduces_reference_logits(official_fixtures):
    model = ban.load_official_checkpoint(official_fixtures / "ban_flickr_g1_h32_plain.pth").eval()
    io = _io(official_fixtures, "ban_flickr_g1_h32_plain")
    assert model.config.task == "grounding" and not model.config.two_word_tables
    with torch.no_grad():
        out = model(io["v"], io["b"], io["q"], io["e"])
    assert out.logits.shape == io["logits"].shape
    assert (out.logits - io["logits"]).abs().max() <= TOLERANCE
    # the masked places are exactly the reference's −99
    assert torch.equal(out.logits == -99, io["logits"] == -99)


@pytest.mark.parametrize("name", ["ban_vqa_g4_h32_c", "ban_flickr_g1_h32_plain"])
def test_export_round_trip_is_exact(official_fixtures, name, tmp_path):
    checkpoint = torch.load(official_fixtures / f"{name}.pth", weights_only=True)
    model = ban.load_official_checkpoint(checkpoint)
    exported = ban.to_official_state_dict(model)
    reference = {key.removeprefix("module."): value for key, value in checkpoint["model_state"].items()}
    assert exported.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(exported[key], value), key
    ban.save_official_checkpoint(model, tmp_path / "again.pth", epoch=3)
    # torch's format before 1.6 (not a zip), the one the authors' code was written for, which every later torch reads
    assert not zipfile.is_zipfile(tmp_path / "again.pth")
    saved = torch.load(tmp_path / "again.pth", weights_only=True)
    assert saved["epoch"] == 3 and saved["model_state"].keys() == checkpoint["model_state"].keys()
    again = ban.load_official_checkpoint(tmp_path / "again.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_glimpses=1, hidden_dim=16, two_word_tables=False),
        dict(num_glimpses=8, hidden_dim=24, two_word_tables=True),
        dict(num_glimpses=3, hidden_dim=8, use_counting=False, feature_dim=40, num_answers=5),
        dict(task="grounding", num_glimpses=1, hidden_dim=12, use_counting=False, num_answers=1),
    ],
)
def test_sizes_are_inferred_for_any_model_made_the_same_way(overrides):
    config = ban.BANConfig(**{"num_tokens": 30, "num_answers": 11, "feature_dim": 20, **overrides})
    model = ban.build_model(config)
    state = {f"module.{key}": value for key, value in ban.to_official_state_dict(model).items()}
    assert infer_config({k.removeprefix("module."): v for k, v in state.items()}) == config
    loaded = ban.load_official_checkpoint({"epoch": 1, "model_state": state, "optimizer_state": {}})
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_what_the_reference_cannot_hold_is_refused():
    config = ban.BANConfig(num_tokens=30, num_answers=11, feature_dim=20, hidden_dim=8, num_glimpses=2)
    with pytest.raises(ValueError, match="does not mask question padding"):
        ban.to_official_state_dict(ban.build_model(config.replace(mask_question_padding=True)))
    with pytest.raises(CheckpointError, match="ban's own state dict"):
        ban.load_official_checkpoint(ban.build_model(config).state_dict())


def _reference_state(official_fixtures):
    return torch.load(official_fixtures / "ban_vqa_g4_h32_c.pth", weights_only=True)["model_state"]


def test_missing_tensor_is_named(official_fixtures):
    state = dict(_reference_state(official_fixtures))
    del state["module.b_net.2.q_net.main.1.weight_g"]
    with pytest.raises(CheckpointError, match=r"b_net\.2\.q_net\.main\.1\.weight_g"):
        ban.load_official_checkpoint(state)


def test_extra_tensor_is_named(official_fixtures):
    state = dict(_reference_state(official_fixtures))
    state["module.b_net.9.v_net.main.1.bias"] = torch.zeros(32)
    with pytest.raises(CheckpointError, match=r"b_net\.9\.v_net\.main\.1\.bias"):
        ban.load_official_checkpoint(state)


def test_a_tensor_given_with_and_without_dataparallels_prefix_is_refused(official_fixtures):
    """Two values for one tensor (say, state dicts merged): neither is taken silently."""
    state = dict(_reference_state(official_fixtures))
    state["classifier.main.3.bias"] = torch.full_like(state["module.classifier.main.3.bias"], 5.0)
    with pytest.raises(CheckpointError) as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field == "classifier.main.3.bias"
    assert caught.value.message.startswith("the same tensor twice, also as 'module.classifier.main.3.bias'")


def test_misshapen_tensor_is_named(official_fixtures):
    state = dict(_reference_state(official_fixtures))
    state["module.q_prj.1.main.1.weight_v"] = torch.zeros(32, 31)
    with pytest.raises(CheckpointError, match=r"q_prj\.1\.main\.1\.weight_v"):
        ban.load_official_checkpoint(state)


def test_a_transposed_tensor_is_refused(official_fixtures):
    """[32, 96] holds as many values as the expected [96, 32]: the shape itself is compared."""
    state = dict(_reference_state(official_fixtures))
    key = "module.v_att.logits.q_net.main.1.weight_v"
    state[key] = state[key].t().contiguous()
    with pytest.raises(CheckpointError, match=r"shape \(32, 96\), expected \(96, 32\)") as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field == key.removeprefix("module.")


def test_an_attention_rank_that_is_no_multiple_of_the_hidden_size_is_named(official_fixtures):
    """The rank K = k·H (the reference's k = 3) is read from h_mat_v: 100 with H = 32 gives no k."""
    state = dict(_reference_state(official_fixtures))
    glimpses = state["module.v_att.logits.h_mat_v"].shape[1]
    state["module.v_att.logits.h_mat_v"] = torch.zeros(1, glimpses, 1, 100)
    with pytest.raises(CheckpointError, match="attention rank 100 is not a multiple of the hidden size 32") as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field == "v_att.logits.h_mat_v"


def test_a_gain_saved_as_one_element_vector_loads(official_fixtures):
    state = dict(_reference_state(official_fixtures))
    reference = ban.load_official_checkpoint(state).state_dict()
    state["module.classifier.main.0.weight_g"] = state["module.classifier.main.0.weight_g"].reshape(1)
    loaded = ban.load_official_checkpoint(state).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in reference.items())


@pytest.mark.parametrize("part", ["counter.", "c_prj."])
def test_half_a_counting_module_is_named_missing(official_fixtures, part):
    state = {key: value for key, value in _reference_state(official_fixtures).items()
             if not key.startswith(f"module.{part}")}
    with pytest.raises(CheckpointError, match="missing tensor") as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field.startswith(part)  # not "unexpected" for the part that is there


@pytest.mark.parametrize(("dropped", "field", "message"), [
    (("module.classifier.",), "classifier.main.3.weight_v", "missing tensor"),  # still a VQA model: b_net, q_prj…
    (("module.classifier.main.3.weight_v",), "classifier.main.3.weight_v", "missing tensor"),
    (("module.w_emb.emb_.weight",), "w_emb.emb_.weight", "the GRU reads two word tables (option c)"),
])
def test_a_missing_part_is_named_not_taken_for_another_model(official_fixtures, dropped, field, message):
    state = {key: value for key, value in _reference_state(official_fixtures).items() if not key.startswith(dropped)}
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field == field


def test_shapes_that_make_no_model_are_named_with_the_file(official_fixtures, tmp_path):
    state = dict(_reference_state(official_fixtures))
    state["module.w_emb.emb.weight"] = state["module.w_emb.emb.weight"][:1]  # padding only: no token
    state["module.w_emb.emb_.weight"] = state["module.w_emb.emb_.weight"][:1]
    torch.save({"epoch": 0, "model_state": state}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'model.pth'}: the tensor shapes give no model: "
                                                        "num_tokens must be a positive integer, got 0")):
        ban.load_official_checkpoint(tmp_path / "model.pth")


def test_a_ban_run_checkpoint_or_a_dict_without_model_state_is_explained(official_fixtures):
    model = ban.load_official_checkpoint(_reference_state(official_fixtures))
    run_layout = {f"model/{key}": value for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="ban's own state dict"):
        ban.load_official_checkpoint(run_layout)
    with pytest.raises(CheckpointError, match="without 'model_state'") as caught:
        ban.load_official_checkpoint({"epoch": 3, "model": _reference_state(official_fixtures)})
    assert caught.value.field == "model_state"


@pytest.mark.parametrize(("value", "message"), [
    (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN or infinite"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN or infinite"),
    (lambda t: t.long(), "expected a floating-point tensor, found torch.int64"),
])
def test_a_tensor_with_bad_values_is_named(official_fixtures, value, message):
    state = dict(_reference_state(official_fixtures))
    key = "module.classifier.main.3.weight_v"
    state[key] = value(state[key])
    with pytest.raises(CheckpointError, match=message) as caught:
        ban.load_official_checkpoint(state)
    assert caught.value.field == key.removeprefix("module.")  # DataParallel's prefix is read past


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="notes.pth"):
        ban.load_official_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        ban.load_official_checkpoint(path)


def test_pickled_code_is_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model_state": Payload()}, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ban.load_official_checkpoint(path)


def test_loaded_model_can_be_fine_tuned(official_fixtures):
    model = ban.load_official_checkpoint(official_fixtures / "ban_vqa_g4_h32_c.pth")
    io = _io(official_fixtures, "ban_vqa_g4_h32_c")
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    before = model.classifier.output.weight_v.detach().clone()
    loss = model(io["v"], io["b"], io["q"]).logits.logsumexp(dim=1).sum()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.classifier.output.weight_v)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_reference_answer_list_and_dictionary_are_read_from_their_pickles(tmp_path, protocol):
    """What the reference's create_dictionary.py / compute_softscore.py pickle: [word2idx, idx2word] and
    label2ans, the strings shared between the two halves as pickle memo references."""
    idx2word = ["what", "is", "the", "man's", "colour", "café"]
    (tmp_path / "dictionary.pkl").write_bytes(
        pickle.dumps([{word: index for index, word in enumerate(idx2word)}, idx2word], protocol=protocol))
    label2ans = ["yes", "no", "2", "red", "t-shirt"]
    (tmp_path / "label2ans.pkl").write_bytes(pickle.dumps(label2ans, protocol=protocol))
    assert ban.read_reference_answers(tmp_path / "label2ans.pkl") == label2ans
    dictionary = ban.read_reference_dictionary(tmp_path / "dictionary.pkl")
    assert dictionary.tokens == idx2word
    # the reference's Dictionary.tokenize: unknown words → ntoken - 1, padded at the end with ntoken
    assert dictionary.encode("What is the zebra?", length=6) == [0, 1, 2, 5, 6, 6]


def test_python2_byte_strings_are_read_as_utf8(tmp_path):
    """Python 2's str is bytes: pickled by its binary protocols, a UTF-8 word reads back as that word."""
    word = "café".encode()
    data = b"\x80\x02]q\x00(U" + bytes([len(word)]) + word + b"q\x01e."  # [str] from Python 2's cPickle, protocol 2
    assert pickle.loads(data, encoding="utf-8") == ["café"]
    (tmp_path / "label2ans.pkl").write_bytes(data)
    assert ban.read_reference_answers(tmp_path / "label2ans.pkl") == ["café"]


def test_python2_pickles_of_the_reference_files_are_read(tmp_path):
    # protocol 0 from Python 2's cPickle: a list of str (S'…') and of unicode (V…), with APPEND and memo PUT/GET
    data = b"(lp0\nS'yes'\np1\naVno\np2\nag1\na."
    assert pickle.loads(data) == ["yes", "no", "yes"]  # the standard unpickler agrees on what it holds
    (tmp_path / "label2ans.pkl").write_bytes(data)
    assert ban.read_reference_answers(tmp_path / "label2ans.pkl") == ["yes", "no", "yes"]


@pytest.mark.parametrize(("content", "message"), [
    ([{"a": 0, "b": 2}, ["a", "b"]], "word2idx and idx2word disagree"),
    ([{"a": 0}, ["a", "a"]], "field 'idx2word': word 'a' is listed twice \\(also entry 0\\)"),
    ([{}, []], "idx2word is not a non-empty list of strings"),
    ({"a": 0}, "expected a pickled \\[word2idx, idx2word\\]"),
])
def test_a_damaged_reference_dictionary_is_named(tmp_path, content, message):
    path = tmp_path / "dictionary.pkl"
    path.write_bytes(pickle.dumps(content, protocol=3))
    with pytest.raises(DataError, match=message) as error:
        ban.read_reference_dictionary(path)
    assert error.value.path == str(path)
    (tmp_path / "answers.pkl").write_bytes(pickle.dumps({"yes": 0}, protocol=3))
    with pytest.raises(DataError, match="expected a pickled non-empty list of answer strings"):
        ban.read_reference_answers(tmp_path / "answers.pkl")
