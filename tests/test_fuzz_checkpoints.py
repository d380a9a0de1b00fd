"""Property-based corruption of our own run files: checkpoint.safetensors (bytes, metadata, tensors) and
config.json. Loading gives CheckpointError / ConfigError / DataError naming the problem, never a raw
safetensors, torch, json or Python error, and never loads non-finite weights.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from test_fuzz_vqa_json import mutated

from ban.engine.checkpoint import Checkpoint, save_checkpoint
from ban.engine.config import TrainConfig
from ban.engine.distributed import DistContext
from ban.engine.run import CONFIG_FILE, RunConfig, load_run, read_run_config
from ban.engine.trainer import resume_from
from ban.errors import BanError, CheckpointError, ConfigError, DataError
from ban.models import BANConfig, build_model, preset

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
CONFIG = preset("tiny", num_tokens=20, num_answers=7, feature_dim=8, hidden_dim=8, word_dim=4, num_glimpses=1)
CPU = DistContext(0, 1, torch.device("cpu"))


def trained_pieces(config: BANConfig = CONFIG) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tiny model (``config``) after one Adamax step (so the optimizer has state)."""
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    return model, optimizer


MODEL, OPTIMIZER = trained_pieces()
STATE = {"epoch": 1, "step": 2, "partial": {"loss": 9.5, "score": 1.2, "count": 64.0, "seconds": 0.5},
         "history": [{"epoch": 1, "lr": 5e-4, "train_loss": 7.1, "train_score": 6.0, "samples": 216, "seconds": 1.5,
                      "samples_per_s": 144.0, "val": {"overall": 13.7}}]}


def load_everything(path: Path, config: BANConfig = CONFIG) -> Checkpoint:
    """What `--resume` does with a checkpoint of a ``config`` model: read it, load weights, optimizer state, RNG
    states, position."""
    checkpoint = Checkpoint(path)
    model, optimizer = trained_pieces(config)
    saved = torch.get_rng_state()
    try:
        resume_from(checkpoint, model, optimizer, CPU)
    finally:
        torch.set_rng_state(saved)
    for parameter in model.parameters():  # optimizer state that fits the parameters it belongs to
        for value in optimizer.state[parameter].values():
            assert not torch.is_tensor(value) or value.shape in (parameter.shape, torch.Size([]))
            assert not torch.is_tensor(value) or torch.isfinite(value).all()
    return checkpoint


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("checkpoint") / "checkpoint.safetensors"
    save_checkpoint(path, MODEL, OPTIMIZER, STATE, {"torch_cpu/0": torch.get_rng_state()})
    return path.read_bytes()


def test_the_uncorrupted_checkpoint_loads(good_file, tmp_path):
    path = fresh(tmp_path)
    path.write_bytes(good_file)
    assert load_everything(path).state == STATE


def fresh(tmp_path: Path, name: str = "checkpoint.safetensors") -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path)) / name


@FUZZ
@given(kind=st.sampled_from(["cut", "flip-header", "header-length", "append", "flip-anywhere"]),
       at=st.integers(0, 10**6), mask=st.integers(1, 255), garbage=st.binary(min_size=1, max_size=64))
def test_garbled_checkpoint_bytes(good_file, kind, at, mask, garbage, tmp_path):
    data = bytearray(good_file)
    header_size = struct.unpack("<Q", data[:8])[0]
    if kind == "cut":
        data = data[: at % len(data)]
    elif kind == "flip-header":
        data[8 + at % header_size] ^= mask
    elif kind == "header-length":
        data[:8] = struct.pack("<Q", at * 97 % (2**64))
    elif kind == "append":
        data += garbage
    else:
        data[at % len(data)] ^= mask
    path = fresh(tmp_path)
    path.write_bytes(bytes(data))
    try:
        checkpoint = load_everything(path)
    except CheckpointError as error:
        assert "checkpoint.safetensors" in str(error)
        return
    # what loaded is what the file holds (safetensors has no checksum: a flipped bit in tensor data that stays
    # a finite value is undetectable, see docs/reliability.md), and never a non-finite weight
    with safe_open(str(path), framework="pt") as handle:
        for name, tensor in checkpoint.model.items():
            assert torch.equal(tensor, handle.get_tensor(f"model/{name}"))
            assert not tensor.is_floating_point() or torch.isfinite(tensor).all()


def rewrite(good: Path, target: Path, change: tuple) -> None:
    """Write ``good`` again with one change to its metadata or tensors."""
    with safe_open(str(good), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    kind, *args = change
    key = sorted(tensors)[args[0] % len(tensors)] if args and isinstance(args[0], int) else None
    if kind == "metadata":
        name, value = args
        if value is None:
            metadata.pop(name, None)
        else:
            metadata[name] = value
    elif kind == "drop":
        del tensors[key]
    elif kind == "rename":
        tensors[key.replace("/", args[1], 1)] = tensors.pop(key)
    elif kind == "reshape":
        tensors[key] = torch.zeros(tensors[key].numel() + args[1])
    elif kind == "dtype":
        tensors[key] = tensors[key].to(args[1])
    elif kind == "non-finite":
        tensor = tensors[key].clone().float().reshape(-1)
        tensor[0] = args[1]
        tensors[key] = tensor.reshape(tensors[key].shape)
    save_file(tensors, str(target), metadata=metadata)


JSON_TEXT = st.sampled_from(["", "{", "[]", "null", "1", '"x"', '{"epoch": "a"}', '{"param_groups": 3}',
                             '{"param_groups": [], "scalars": {}}', '{"param_groups": [{}], "scalars": {"x": 1}}',
                             "NaN", "[" * 5000])
CHANGES = st.one_of(
    st.tuples(st.just("metadata"), st.sampled_from(["format", "state", "optimizer"]), st.none() | JSON_TEXT),
    st.tuples(st.just("drop"), st.integers(0, 10**4)),
    st.tuples(st.just("rename"), st.integers(0, 10**4), st.sampled_from(["x/", "/x/", "/0/", "//", "/-1/"])),
    st.tuples(st.just("reshape"), st.integers(0, 10**4), st.integers(0, 3)),
    st.tuples(st.just("dtype"), st.integers(0, 10**4), st.sampled_from([torch.int64, torch.float16, torch.uint8,
                                                                         torch.bool, torch.float64])),
    st.tuples(st.just("non-finite"), st.integers(0, 10**4), st.sampled_from([float("nan"), float("inf")])),
)


@FUZZ
@given(changes=st.lists(CHANGES, min_size=1, max_size=2))
def test_corrupted_checkpoint_contents(good_file, changes, tmp_path):
    path = fresh(tmp_path)
    path.write_bytes(good_file)
    for change in changes:
        rewrite(path, path, change)
    try:
        checkpoint = load_everything(path)
    except CheckpointError as error:
        assert "checkpoint.safetensors" in str(error)
        return
    reference = trained_pieces()[0].state_dict()
    assert checkpoint.model.keys() == reference.keys()
    for name, tensor in checkpoint.model.items():
        assert tensor.shape == reference[name].shape and tensor.dtype == reference[name].dtype, name
        assert torch.isfinite(tensor).all(), name


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_non_finite_values_in_a_checkpoint_are_refused_by_name(good_file, tmp_path, part):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(good_file)
    with safe_open(str(path), framework="pt") as handle:
        keys = sorted(handle.keys())
        position = next(i for i, key in enumerate(keys)
                        if key.startswith(f"{part}/") and handle.get_tensor(key).is_floating_point())
    rewrite(path, path, ("non-finite", position, float("nan")))
    with pytest.raises(CheckpointError, match=re.escape(keys[position].split("/", 1)[1])):
        load_everything(path)


@pytest.mark.parametrize("name", ["classifier.hidden.weight_v", "attention.glimpse_weight_v",
                                  "counter.functions.7.weight"])
def test_an_all_zero_weight_direction_is_refused_by_name(tmp_path, name):
    """Its norm is 0: weight normalisation (or a counting function's |w| / Σ|w|) would make every output NaN,
    which evaluation would then blame on the region features."""
    model, optimizer = trained_pieces(replace(CONFIG, use_counting=True))
    assert name in model.state_dict()
    with torch.no_grad():
        model.state_dict()[name].zero_()
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, optimizer, STATE, {"torch_cpu/0": torch.get_rng_state()})
    with pytest.raises(CheckpointError) as caught:
        load_everything(path)
    assert str(caught.value) == (f"{path}: field {name!r}: all zeros: its layer divides this by its norm, so every "
                                 "output would be NaN")


def test_an_all_zero_counting_function_the_counter_does_not_use_is_loaded(tmp_path):
    """f₈…f₁₅ are kept only for the reference's layout: zeros there change no output."""
    counting = replace(CONFIG, use_counting=True)
    model, optimizer = trained_pieces(counting)
    with torch.no_grad():
        model.state_dict()["counter.functions.8.weight"].zero_()
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, optimizer, STATE, {"torch_cpu/0": torch.get_rng_state()})
    assert not load_everything(path, counting).model["counter.functions.8.weight"].any()


RUN = RunConfig("vqa", "/data/prepared", CONFIG, TrainConfig(batch_size=32, epochs=3), {"answers.json": "ab" * 32})


@FUZZ
@given(document=mutated(RUN.to_dict()))
def test_corrupted_config_json(document, tmp_path):
    run_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    (run_dir / CONFIG_FILE).write_text(json.dumps(document), encoding="utf-8")
    try:
        run = read_run_config(run_dir)
    except BanError as error:
        assert isinstance(error, DataError) and error.path == str(run_dir / CONFIG_FILE)
        return
    try:
        build_model(run.model)
    except ConfigError as error:  # sizes beyond this machine's memory: named by the settings
        assert "more than this machine" in str(error)
        return
    assert valid_config(document)


def valid_config(document: Any) -> bool:
    """Independent check: every model / training setting of the accepted config has its declared type."""
    if not isinstance(document, dict) or not isinstance(document.get("task"), str):
        return False
    defaults = {**RUN.to_dict()["model"], **RUN.to_dict()["train"]}
    values = {**document["model"], **document["train"]}
    for key, value in values.items():
        expected = type(defaults[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return False
    return True


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b'{"format": "ban-run/1"}', b"[" * 100_000, b"\xff{}",
                                  b'{"format": "ban-run/1", "task": "vqa", "data_dir": 1, "model": [], "train": 1}'])
def test_unreadable_config_json(data, tmp_path):
    (tmp_path / CONFIG_FILE).write_bytes(data)
    with pytest.raises(DataError) as error:
        read_run_config(tmp_path)
    assert error.value.path == str(tmp_path / CONFIG_FILE)


def test_a_config_json_with_absurd_sizes_is_named(tmp_path):
    # the sizes pass the type checks, but no machine holds the model: refused before allocating, naming the file
    absurd = RunConfig("vqa", str(tmp_path), CONFIG.replace(hidden_dim=10**12), RUN.train, {})
    (tmp_path / CONFIG_FILE).write_text(json.dumps(absurd.to_dict()), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{CONFIG_FILE}: .*hidden_dim=1000000000000, .* GiB of float32 weights"):
        load_run(tmp_path)
