"""Import and export of the reference code's checkpoints (jnhwkim/ban-vqa).

A reference checkpoint is ``{'epoch', 'model_state', 'optimizer_state'}`` (keys with ``module.`` when saved
from DataParallel, as the reference's training script does) or a bare state dict. Every size is inferred from
the tensor shapes; pickles are read only with ``torch.load(weights_only=True)``. The reference's answer list and
dictionary (pickles too) are read without running pickled code, so its checkpoints' classifier rows and token ids
can be named.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor, nn

from ban.data.atomic import write_with
from ban.data.dictionary import Dictionary
from ban.data.distinct import check_listed_once
from ban.data.pickle_map import read_plain_pickle
from ban.engine.checkpoint import WEIGHT_DTYPES, check_weight_direction
from ban.errors import CheckpointError, ConfigError, DataError
from ban.models import BANConfig, build_model

# (reference key template, our key template): {i} is a glimpse or function index, {p} a parameter name.
_KEY_TEMPLATES: list[tuple[str, str]] = [
    ("w_emb.emb.weight", "word_embedding.table.weight"),
    ("w_emb.emb_.weight", "word_embedding.second_table.weight"),
    ("q_emb.rnn.{p}", "question_encoder.rnn.{p}"),
    ("v_att.logits.h_mat_v", "attention.glimpse_weight_v"),
    ("v_att.logits.h_mat_g", "attention.glimpse_weight_g"),
    ("v_att.logits.h_bias", "attention.glimpse_bias"),
    ("v_att.logits.v_net.main.1.{p}", "attention.v_proj.layers.0.{p}"),
    ("v_att.logits.q_net.main.1.{p}", "attention.q_proj.layers.0.{p}"),
    ("b_net.{i}.v_net.main.1.{p}", "pooling.{i}.v_proj.layers.0.{p}"),
    ("b_net.{i}.q_net.main.1.{p}", "pooling.{i}.q_proj.layers.0.{p}"),
    ("q_prj.{i}.main.1.{p}", "residual_proj.{i}.layers.0.{p}"),
    ("c_prj.{i}.main.0.{p}", "count_proj.{i}.layers.0.{p}"),
    ("classifier.main.0.{p}", "classifier.hidden.{p}"),
    ("classifier.main.3.{p}", "classifier.output.{p}"),
    ("counter.f.{i}.weight", "counter.functions.{i}.weight"),
]


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>\w+)")
    return re.compile(pattern)


# Parts only the reference's VQA model has (its grounding model is the word tables, the GRU and v_att).
_VQA_ONLY_PARTS = ("classifier.", "b_net.", "q_prj.", "c_prj.", "counter.")

_REFERENCE_TO_OURS = [(_template_regex(theirs), ours) for theirs, ours in _KEY_TEMPLATES]
_OURS_TO_REFERENCE = [(_template_regex(ours), theirs) for theirs, ours in _KEY_TEMPLATES]
# Reference tensors with extra singleton axes (ours are [G, K] and [G]; theirs [1, G, 1, K] and [1, G, 1, 1]).
_PADDED_SHAPE_KEYS = ("attention.glimpse_weight_v", "attention.glimpse_bias")


def _reference_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The reference's shape of our tensor ``key`` of shape ``shape``."""
    if key in _PADDED_SHAPE_KEYS:
        return (1, shape[0], 1, shape[1] if len(shape) > 1 else 1)
    return shape


def _translate(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for regex, template in rules:
        match = regex.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def _read_state_dict(source: str | os.PathLike[str] | Mapping[str, object]) -> tuple[dict[str, Tensor], str]:
    """The model's tensors from a checkpoint file or dict, ``module.`` prefixes removed; also a label for errors."""
    label = "state dict"
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        if not Path(source).is_file():
            raise CheckpointError("a directory, not a checkpoint file" if Path(source).is_dir() else "no such file",
                                  path=label)
        try:
            with warnings.catch_warnings():  # a plain pickle gets torch's warning about its protocol before the error
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad checkpoint file
            raise CheckpointError(_load_refusal(error), path=label) from error
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a dict, found {type(source).__name__}", path=label)
    if "model_state" not in source and "epoch" in source:
        raise CheckpointError("a checkpoint dict without 'model_state' (the reference's are {'epoch', "
                              "'model_state', 'optimizer_state'}; a bare state dict holds only tensors)", path=label,
                              field="model_state")
    state = source.get("model_state", source)
    if not isinstance(state, Mapping):
        raise CheckpointError("'model_state' is not a dict of tensors", path=label, field="model_state")
    tensors: dict[str, Tensor] = {}
    written_as: dict[str, str] = {}  # a tensor's name without DataParallel's prefix → its key in the file
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"entry is a {type(value).__name__}, not a tensor", path=label, field=str(key))
        name = key.removeprefix("module.")
        if name in written_as:
            raise CheckpointError(f"the same tensor twice, also as {written_as[name]!r} (with and without "
                                  "DataParallel's 'module.'): which one holds the weights?", path=label, field=key)
        tensors[name], written_as[name] = value, key
    if "w_emb.emb.weight" not in tensors and any(key.endswith("word_embedding.table.weight") for key in tensors):
        raise CheckpointError("this is ban's own state dict (ban's parameter names), not the reference's: give it "
                              "to model.load_state_dict, or load a run of `ban train` with ban.load_run", path=label)
    return tensors, label


def _load_refusal(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line: torch's own text runs to many lines and
    suggests ``weights_only=False``, which would run the file's pickled code."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return (f"not a readable PyTorch checkpoint: it pickles {found[1]}, not only tensors (not unpickled here: "
                "that could run code)")
    return "not a readable PyTorch checkpoint (not a file of torch.save, or a damaged one)"


def _shape(tensors: Mapping[str, Tensor], key: str, label: str, rank: int) -> tuple[int, ...]:
    if key not in tensors:
        raise CheckpointError("missing tensor", path=label, field=key)
    shape = tuple(tensors[key].shape)
    if len(shape) != rank or 0 in shape:
        raise CheckpointError(f"expected a non-empty {rank}-d tensor, found shape {shape}", path=label, field=key)
    return shape


def infer_config(tensors: Mapping[str, Tensor], label: str = "state dict") -> BANConfig:
    """The BANConfig of a reference state dict (keys without ``module.``), from its tensor shapes."""
    num_rows, word_dim = _shape(tensors, "w_emb.emb.weight", label, 2)
    hidden = _shape(tensors, "q_emb.rnn.weight_hh_l0", label, 2)[1]
    _, glimpses, _, rank = _shape(tensors, "v_att.logits.h_mat_v", label, 4)
    feature_dim = _shape(tensors, "v_att.logits.v_net.main.1.weight_v", label, 2)[1]
    if rank % hidden:
        raise CheckpointError(f"attention rank {rank} is not a multiple of the hidden size {hidden}",
                              path=label, field="v_att.logits.h_mat_v")
    is_vqa = any(key.startswith(_VQA_ONLY_PARTS) for key in tensors)  # a missing part is then named below
    if "w_emb.emb_.weight" not in tensors and _shape(tensors, "q_emb.rnn.weight_ih_l0", label, 2)[1] == 2 * word_dim:
        raise CheckpointError("missing tensor: the GRU reads two word tables (option c)", path=label,
                              field="w_emb.emb_.weight")
    use_counting = any(key.startswith(("counter.", "c_prj.")) for key in tensors)  # one part alone: the rest is missing
    num_count_objects = 10
    if use_counting:
        num_count_objects = _shape(tensors, "c_prj.0.main.0.weight_v", label, 2)[1] - 1
    try:
        return BANConfig(
            task="vqa" if is_vqa else "grounding",
            num_tokens=num_rows - 1,
            num_answers=_shape(tensors, "classifier.main.3.weight_v", label, 2)[0] if is_vqa else 1,
            feature_dim=feature_dim,
            word_dim=word_dim,
            two_word_tables="w_emb.emb_.weight" in tensors,
            hidden_dim=hidden,
            num_glimpses=glimpses,
            rank_factor=rank // hidden,
            use_counting=use_counting,
            num_count_objects=num_count_objects,
        )
    except ConfigError as error:  # sizes no model has, e.g. an empty vocabulary
        raise CheckpointError(f"the tensor shapes give no model: {error}", path=label) from None


def load_official_checkpoint(source: str | os.PathLike[str] | Mapping[str, object]) -> nn.Module:
    """A BAN model holding the weights of a reference checkpoint (file path, checkpoint dict or state dict).

    Sizes, option c, glimpses, counting and the task (VQA or grounding) come from the tensor shapes. Missing,
    extra or misshapen tensors raise CheckpointError naming the tensor. The model is returned in train mode;
    call ``.eval()`` to evaluate.
    """
    tensors, label = _read_state_dict(source)
    config = infer_config(tensors, label)
    model = build_model(config)
    expected = model.state_dict()
    converted: dict[str, Tensor] = {}
    for key, value in tensors.items():
        ours = _translate(key, _REFERENCE_TO_OURS)
        if ours is None or ours not in expected:
            raise CheckpointError("unexpected tensor for this model", path=label, field=key)
        if value.dtype not in WEIGHT_DTYPES or value.layout != torch.strided or value.is_meta:
            raise CheckpointError(f"expected a floating-point tensor, found {value.dtype} ({value.layout}"
                                  f"{', meta' if value.is_meta else ''})", path=label, field=key)
        if not torch.isfinite(value).all():
            raise CheckpointError("tensor holds NaN or infinite values", path=label, field=key)
        shape = _reference_shape(ours, tuple(expected[ours].shape))
        scalar = value.numel() == 1 and value.dim() <= 1 and len(shape) == 0  # a gain saved as [] or [1]
        if tuple(value.shape) != shape and not scalar:
            raise CheckpointError(f"shape {tuple(value.shape)}, expected {shape}", path=label, field=key)
        check_weight_direction(value, label, ours, field=key)
        converted[ours] = value.reshape(expected[ours].shape)
    missing = sorted(str(_translate(key, _OURS_TO_REFERENCE)) for key in set(expected) - set(converted))
    if missing:
        raise CheckpointError(f"missing tensors {missing}", path=label, field=missing[0])
    model.load_state_dict(converted)
    return model


def to_official_state_dict(model: nn.Module) -> OrderedDict[str, Tensor]:
    """Our model's weights in the reference layout (keys without ``module.``, reference shapes). A model that
    masks question padding is refused: the reference does not mask, so these weights would compute another
    function there. (The authors' scripts build 300-d word tables, an attention of rank factor k = 3 and a
    counter of 10 objects for VQA: other ``word_dim``, ``rank_factor``, ``num_count_objects``, or a VQA model
    without counting, load here only.)"""
    config = getattr(model, "config", None)
    if config is not None and config.mask_question_padding:
        raise ValueError("the reference does not mask question padding (mask_question_padding=True): it would "
                         "compute another function with these weights")
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in model.state_dict().items():
        reference = _translate(key, _OURS_TO_REFERENCE)
        if reference is None:
            raise ValueError(f"parameter {key!r} has no counterpart in the reference model")
        state[reference] = value.detach().reshape(_reference_shape(key, tuple(value.shape))).clone()
    return state


def save_official_checkpoint(model: nn.Module, path: str | os.PathLike[str], epoch: int = 0) -> None:
    """Write ``{'epoch', 'model_state'}`` as the reference's ``utils.save_model`` does when given no optimizer:
    keys with DataParallel's ``module.``, since the reference's scripts wrap the model in ``nn.DataParallel``
    before loading (its ``test.py`` and ``evaluate.py`` load this file; resuming training there with ``--input``
    needs an optimizer state, which ban cannot give). The file is in torch's format before 1.6 (not a zip), the
    one the reference's own PyTorch wrote and reads; every later torch reads it too."""
    state = OrderedDict((f"module.{key}", value) for key, value in to_official_state_dict(model).items())
    checkpoint = {"epoch": epoch, "model_state": state}
    write_with(path, lambda temporary: _torch_save(checkpoint, temporary))


class _PythonWrites:
    """A binary file's ``write`` and ``flush`` only. Given a file with a descriptor, ``torch.save`` writes the
    tensors' bytes to the descriptor from C++, and a write that fails (no room…) is a RuntimeError without its
    system error; given this, it writes every byte through Python, so such a failure is the :class:`OSError` it
    was, which :func:`~ban.data.atomic.write_with` knows."""

    def __init__(self, file: BinaryIO) -> None:
        self.write, self.flush = file.write, file.flush


def _torch_save(checkpoint: dict[str, Any], path: Path) -> None:
    with path.open("wb") as file:
        torch.save(checkpoint, _PythonWrites(file), _use_new_zipfile_serialization=False)


def read_reference_answers(path: str | os.PathLike[str]) -> list[str]:
    """The answers of the reference's classifier rows, in label order, from its ``cache/trainval_label2ans.pkl``
    (a pickled list of str): ``answers[logits.argmax(-1)]`` names a reference checkpoint's predictions. (ban's
    own ``answers.json`` orders the same answers differently.)"""
    answers = read_plain_pickle(path, missing="answer list not found (the reference's cache/trainval_label2ans.pkl)")
    if not isinstance(answers, list) or not answers or not all(isinstance(answer, str) for answer in answers):
        raise DataError("expected a pickled non-empty list of answer strings", path=path)
    return answers


def read_reference_dictionary(path: str | os.PathLike[str]) -> Dictionary:
    """The reference's question dictionary from its ``dictionary.pkl`` (a pickled ``[word2idx, idx2word]``), as
    a :class:`ban.data.dictionary.Dictionary` that encodes questions to the reference's token ids (unknown words
    → ``num_tokens - 1``, padding ``num_tokens``, as the reference)."""
    data = read_plain_pickle(path, missing="dictionary not found (the reference's data/dictionary.pkl)")
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], dict) and isinstance(data[1], list)):
        raise DataError("expected a pickled [word2idx, idx2word]", path=path)
    word2idx, idx2word = data
    if not idx2word or not all(isinstance(word, str) for word in idx2word):
        raise DataError("idx2word is not a non-empty list of strings", path=path, field="idx2word")
    check_listed_once(idx2word, "word", "each token id stands for one word", path, field="idx2word")
    if word2idx != {word: index for index, word in enumerate(idx2word)}:
        raise DataError("word2idx and idx2word disagree", path=path, field="word2idx")
    return Dictionary(idx2word)


def read_dictionary(path: str | os.PathLike[str]) -> Dictionary:
    """A dictionary file by its suffix: the reference's ``dictionary.pkl`` (:func:`read_reference_dictionary`)
    or ban's ``dictionary.json``."""
    return read_reference_dictionary(path) if Path(path).suffix == ".pkl" else Dictionary.load(path)


def reorder_answers(model: nn.Module, rows: Sequence[str], answers: Sequence[str], rows_file: str | os.PathLike[str],
                    answers_file: str | os.PathLike[str]) -> None:
    """Put the classifier rows of a VQA ``model``, which answer ``rows`` in order (the reference's
    ``trainval_label2ans.pkl``, read from ``rows_file``), into the order of ``answers`` (a prepared dataset's
    ``answers.json``, ``answers_file``): the same answers, each once, in both. Weight normalisation's one gain
    per matrix is unchanged by a permutation of its rows, so the model computes the same logits, reordered."""
    output = model.classifier.output
    if len(rows) != output.out_features:
        raise DataError(f"lists {len(rows)} answers; the checkpoint's classifier has {output.out_features} rows",
                        path=rows_file)
    check_listed_once(list(rows), "answer", "each classifier row answers one candidate", rows_file)
    position = {answer: index for index, answer in enumerate(rows)}
    unknown, unused = [a for a in answers if a not in position], sorted(set(rows) - set(answers))
    if unknown or unused:
        raise DataError(f"other answers than the checkpoint's: {len(unknown)} here not in {Path(rows_file).name} "
                        f"(e.g. {unknown[:3]}), {len(unused)} there not here (e.g. {unused[:3]}); prepare the dataset "
                        "with the reference's candidates (--min-answer-count 9, train+val)", path=answers_file)
    order = torch.tensor([position[answer] for answer in answers])
    with torch.no_grad():
        output.weight_v.copy_(output.weight_v[order])
        output.bias.copy_(output.bias[order])
