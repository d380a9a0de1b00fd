"""TrainConfig defaults (PAPER.md §4), --set parsing and the learning-rate schedule."""

from __future__ import annotations

import re

import pytest
import torch

from ban.engine.config import (
    TrainConfig,
    apply_overrides,
    check_new_training,
    parse_assignments,
    resolve_device,
    split_overrides,
    typed_overrides,
)
from ban.engine.schedule import learning_rate
from ban.errors import ConfigError
from ban.models import BANConfig


def test_defaults_are_the_paper_recipe():
    config = TrainConfig()
    assert (config.lr, config.batch_size, config.epochs, config.grad_clip, config.seed) == (1e-3, 256, 13, 0.25, 1204)
    assert config.betas == (0.9, 0.999) and config.eps == 1e-8
    assert config.precision == "auto"


def test_schedule_matches_the_reference_epoch_by_epoch():
    # Hand-written from PAPER.md §4: warm-up 0.5, 1, 1.5, 2 × lr, then 2 × lr until epoch 9, × 0.25 at 10 and 12.
    expected = [0.5e-3, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 0.5e-3, 0.5e-3, 0.125e-3]
    assert [learning_rate(TrainConfig(), e) for e in range(13)] == pytest.approx(expected, rel=1e-12)


def test_schedule_with_train_val_lr_and_no_warmup():
    config = TrainConfig(lr=7e-4, warmup=(), decay_epochs=(1,), decay_rate=0.5)
    assert [learning_rate(config, e) for e in range(3)] == pytest.approx([7e-4, 3.5e-4, 3.5e-4])


def test_a_decay_epoch_inside_the_warm_up_has_no_effect_as_in_the_reference():
    # the reference's loop: `if epoch < len(warmup): lr = warmup[epoch] elif epoch in decay_epochs: lr *= rate`
    config = TrainConfig(lr=1.0, warmup=(0.5, 1.0, 1.5, 2.0), decay_epochs=(2, 5, 5), decay_rate=0.25)
    assert [learning_rate(config, e) for e in range(7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 0.5, 0.5]
    # the first epoch after the warm-up is no longer in it: a decay listed there applies
    config = TrainConfig(lr=1.0, warmup=(0.5, 1.0, 1.5, 2.0), decay_epochs=(4,), decay_rate=0.25)
    assert [learning_rate(config, e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 0.5, 0.5]


def test_a_new_run_refuses_negative_decay_epochs_a_stored_one_keeps_them():
    """Epochs count from 0: a new run's -1 is refused; a stored run's config (accepted when written) still loads."""
    config = apply_overrides(TrainConfig(), parse_assignments(["decay_epochs=-1,0"]))
    with pytest.raises(ConfigError, match="'decay_epochs': epochs are counted from 0, not \\(-1, 0\\)"):
        check_new_training(config)
    assert TrainConfig.from_dict(config.to_dict()).decay_epochs == (-1, 0)
    check_new_training(TrainConfig())


def test_overrides_are_typed():
    config = apply_overrides(TrainConfig(), parse_assignments(
        ["lr=7e-4", "batch_size=32", "train_splits=train, val", "precision=fp32", "warmup=0.5,1"]))
    assert config.lr == 7e-4 and config.batch_size == 32 and config.train_splits == ("train", "val")
    assert config.precision == "fp32" and config.warmup == (0.5, 1.0)


def test_model_overrides_are_split_and_typed():
    train, model = split_overrides(parse_assignments(["model.use_counting=false", "model.dropout=0", "seed=3"]))
    assert train == {"seed": "3"}
    assert typed_overrides(BANConfig, model, "model") == {"use_counting": False, "dropout": 0.0}


@pytest.mark.parametrize(("assignment", "message"), [
    ("learning_rate=1", "unknown training setting 'learning_rate'; known: batch_size,"),
    ("batch_size=big", "setting 'batch_size': 'big' is not a valid int"),
    ("precision=fp8", "precision must be one of auto, bf16, fp32, not 'fp8'"),
    ("noequals", "--set expects key=value, got 'noequals'"),
    ("epochs=-1", "training setting 'epochs' must be non-negative, not -1"),
])
def test_bad_training_settings_are_rejected(assignment, message):
    """Each refusal says what is wrong with that setting (the messages of ban.engine.config)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(TrainConfig(), parse_assignments([assignment]))


@pytest.mark.parametrize(("assignment", "message"), [
    ("lr=inf", "'lr'"), ("lr=nan", "'lr'"), ("eps=0", "'eps' must be positive"),
    ("grad_clip=-1", "'grad_clip' must be positive"), ("grad_clip=0", "'grad_clip' must be positive"),
    ("decay_rate=0", "'decay_rate' must be positive"), ("num_workers=-1", "'num_workers' must be non-negative"),
    ("betas=0.9,1", "'betas' needs two values in [0, 1)"), ("betas=-0.1,0.9", "'betas'"), ("betas=0.9", "'betas'"),
    ("warmup=0.5,0", "'warmup'"), ("device=tpu", "'device': 'tpu' is not a device"),
    ("device=cuda:x", "'device'"), ("device=meta", "'device'"),
])
def test_settings_out_of_range_name_the_setting(assignment, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(TrainConfig(), parse_assignments([assignment]))


def test_devices_resolve_to_ones_this_machine_has(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device: 'tpu' is not a device"):
        resolve_device("tpu", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'cuda:1' is not on this machine, which has no CUDA"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="'cuda:2' is not on this machine, which has 2 CUDA devices"):
        resolve_device("cuda:2")


def test_unknown_model_setting_is_rejected():
    with pytest.raises(ConfigError, match="unknown model setting 'glimpses'"):
        typed_overrides(BANConfig, {"glimpses": "4"}, "model")


def test_round_trip_through_dict():
    config = TrainConfig(train_splits=("train", "val"), lr=7e-4)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown training setting 'momentum'"):
        TrainConfig.from_dict({**config.to_dict(), "momentum": 0.9})


@pytest.mark.parametrize(("setting", "value"), [("decay_epochs", {}), ("warmup", None), ("train_splits", "train"),
                                                ("betas", {"0.9": 0.999})])
def test_a_tuple_setting_read_from_json_must_be_a_list(setting, value):
    """config.json holds tuples as lists: an object, a string or null there was turned into a tuple of its keys or
    letters (or a TypeError), not refused (found by the config.json fuzz test)."""
    with pytest.raises(ConfigError, match=f"training setting '{setting}': .* does not fit its type, tuple"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), setting: value})
