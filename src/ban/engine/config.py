"""Training configuration: the paper's recipe as defaults, and ``key=value`` overrides from the command line.

>>> TrainConfig().lr, TrainConfig().batch_size, TrainConfig().epochs, TrainConfig().grad_clip
(0.001, 256, 13, 0.25)
>>> apply_overrides(TrainConfig(), {"lr": "7e-4", "train_splits": "train,val"}).train_splits
('train', 'val')
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import torch

from ban.config_types import check_known, check_types
from ban.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")
DEVICE_TYPES = ("cpu", "cuda")
POSITIVE = ("lr", "batch_size", "eval_batch_size", "eps", "grad_clip", "decay_rate")  # settings that must be > 0
NON_NEGATIVE = ("epochs", "num_workers")
# integer settings are torch int64s (sizes, counts); the seed too: torch.manual_seed takes [-2**63, 2**64 - 1], and
# an int64 seed leaves room for the seed + epoch / seed + rank the trainer seeds with
INT64 = torch.iinfo(torch.int64)


@dataclass(frozen=True)
class TrainConfig:
    """Everything about training that is not the model (by default the reference's recipe for the published model).

    The learning rate of epoch ``e`` is ``lr × warmup[e]`` during the warm-up epochs, then ``lr × warmup[-1]``,
    multiplied by ``decay_rate`` at each epoch listed in ``decay_epochs`` after the warm-up (see
    :mod:`ban.engine.schedule`).
    ``train_splits`` and ``val_split`` name splits of the prepared dataset; an empty ``val_split`` trains without
    validation. ``device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
    ``batch_size`` is the global batch: under ``torchrun`` it is split across the processes. ``resident`` copies
    the training splits (and the validation split) onto the training device once and gathers each batch there
    instead of running a data loader (VQA; :mod:`ban.data.resident`). ``bucket_boxes`` batches images of similar
    box counts together (:class:`ban.engine.distributed.ShardedBatches`): less padding and fewer distinct shapes,
    but batches are no longer uniform samples of the data (its accuracy effect is measured in
    benchmarks/RESULTS.md).
    ``cuda_graphs`` replays each training step as CUDA graphs (:mod:`ban.engine.trainer_graphs`; VQA on one GPU):
    the same computation without the launch of every kernel; a new batch shape costs one capture. ``compile`` runs
    the forward pass (and so its backward) through ``torch.compile`` (:func:`ban.engine.graphs.compiled_forward`;
    BAN on VQA, one process), with ``cuda_graphs`` the update too: fused element-wise work, the first batches
    waiting for the compilation; on a CPU slower than the default (benchmarks/RESULTS.md).
    """

    lr: float = 1e-3
    batch_size: int = 256
    epochs: int = 13
    warmup: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    decay_epochs: tuple[int, ...] = (10, 12, 14, 16, 18)  # the reference's range(10, 20, 2): 10, 12 in 13 epochs
    decay_rate: float = 0.25
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 0.25
    seed: int = 1204
    precision: str = "auto"
    device: str = "auto"
    num_workers: int = 0
    resident: bool = False
    bucket_boxes: bool = False
    cuda_graphs: bool = False
    compile: bool = False
    eval_batch_size: int = 512
    train_splits: tuple[str, ...] = ("train",)
    val_split: str = "val"
    skip_nonfinite: bool = False

    def __post_init__(self) -> None:
        check_types(self, "training")
        _check_int64(self)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        _check_ranges(self)
        parse_device(self.device, "training setting 'device'")
        if not self.train_splits:
            raise ConfigError("train_splits must name at least one split")
        repeated = sorted({split for split in self.train_splits if self.train_splits.count(split) > 1})
        if repeated:
            raise ConfigError(f"training setting 'train_splits' lists {', '.join(repeated)} more than once (an "
                              "epoch would go over its questions that many times)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f, v in _items(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (JSON lists become tuples); unknown keys and values that do not fit their
        setting's type (a tuple given as an object, a string or null, too) are a :class:`ConfigError`."""
        check_known(cls, data, "training")
        hints = typing.get_type_hints(cls)
        return cls(**{k: tuple(v) if _is_tuple(hints[k]) and isinstance(v, list) else v for k, v in data.items()})


# the reference's base learning rate when it trains without validation (train+val, with VG: its test-dev model)
LR_WITHOUT_VALIDATION = 7e-4


def reference_learning_rate(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """``config`` (the paper's VQA recipe, with the ``overrides`` given) with the base learning rate the reference
    takes for it: :data:`LR_WITHOUT_VALIDATION` when it validates on nothing (``val_split`` empty) and no ``lr``
    was given, else ``config.lr``."""
    if config.val_split or "lr" in overrides:
        return config
    return dataclasses.replace(config, lr=LR_WITHOUT_VALIDATION)


# The synthetic scenes run (`ban train` with no --data), tuned to finish in minutes on a 2-core CPU. Measured: on
# 2,800 images (10.8k training questions) the tiny model memorised the questions and, depending on float summation
# order, reached 48-71 % after 16 epochs; on 5,600 images (21.6k questions) it reads the scenes from epoch 5 on and
# reaches 81.3 / 81.8 % (seeds 1204 / 2) after 10 epochs. With the recipe's batch 256 and warm-up, or with dropout,
# it stays at the question-only baseline for many epochs.
SYNTHETIC_TRAINING: dict[str, Any] = {"batch_size": 32, "epochs": 10, "lr": 2e-3, "warmup": (), "decay_epochs": ()}


def _check_int64(config: TrainConfig) -> None:
    """Refuse an integer setting (or an integer in a tuple setting) outside :data:`INT64`, naming the setting."""
    for field, value in _items(config):
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, int) and not INT64.min <= number <= INT64.max:
                raise ConfigError(f"training setting {field.name!r}: {number} does not fit a 64-bit integer "
                                  f"({INT64.min} … {INT64.max})")


def _check_ranges(config: TrainConfig) -> None:
    """Refuse a number outside its range, naming the setting: :data:`POSITIVE` ones, :data:`NON_NEGATIVE` ones,
    the warm-up factors (positive) and Adamax's two ``betas`` (in [0, 1))."""
    for name in POSITIVE + NON_NEGATIVE:
        value, positive = getattr(config, name), name in POSITIVE
        if value < 0 or (positive and value == 0):
            raise ConfigError(f"training setting {name!r} must be {'positive' if positive else 'non-negative'}, "
                              f"not {value!r}")
    if not all(factor > 0 for factor in config.warmup):
        raise ConfigError(f"training setting 'warmup': the factors must be positive, not {config.warmup!r}")
    if len(config.betas) != 2 or not all(0 <= beta < 1 for beta in config.betas):
        raise ConfigError(f"training setting 'betas' needs two values in [0, 1), not {config.betas!r}")


def check_new_training(config: TrainConfig) -> None:
    """What a new run's settings must also respect (a stored run's config, accepted when it was written, is not
    refused by them, so that it can still be resumed and evaluated): decay epochs counted from 0, and a val_split
    that is not also trained on (its scores would measure training questions, and best.safetensors would be chosen
    by them)."""
    if not all(epoch >= 0 for epoch in config.decay_epochs):
        raise ConfigError(f"training setting 'decay_epochs': epochs are counted from 0, not {config.decay_epochs!r}")
    if config.val_split in config.train_splits:
        raise ConfigError(f"training setting 'val_split': {config.val_split!r} is also in train_splits, so its scores "
                          "would measure questions the model trains on, and best.safetensors would be chosen by "
                          "them; validate on a split not trained on, or not at all (an empty val_split, "
                          "--set val_split=)")


def parse_device(name: str, setting: str) -> torch.device | None:
    """The device ``name`` stands for, None for ``"auto"``; a name other than auto, cpu, cuda or cuda:N is a
    :class:`ConfigError` naming ``setting`` (e.g. ``"--device"``)."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"{setting}: {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(name: str, setting: str = "training setting 'device'") -> torch.device:
    """The device to run on: ``"auto"`` → CUDA when this machine has it, else the CPU; any other ``name`` (see
    :func:`parse_device`) must be a device this machine has, else a :class:`ConfigError` naming ``setting``."""
    device = parse_device(name, setting)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ConfigError(f"{setting}: {name!r} is not on this machine, which has {_cuda_devices(count)}")
    return device


def _cuda_devices(count: int) -> str:
    """The ``count`` CUDA devices of this machine in words (saying so when torch was built without CUDA)."""
    if count:
        return f"{count} CUDA device{'s' * (count != 1)}"
    return "no CUDA device" if torch.version.cuda else f"no CUDA: this torch ({torch.__version__}) was built without it"


def _items(config: Any) -> list[tuple[dataclasses.Field, Any]]:
    return [(f, getattr(config, f.name)) for f in dataclasses.fields(config)]


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """``["a=1", "model.b=x"]`` → ``{"a": "1", "model.b": "x"}``; a missing ``=`` is a :class:`ConfigError`."""
    parsed = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {assignment!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def coerce(text: str, hint: Any, key: str) -> Any:
    """Convert the command-line string ``text`` to the type ``hint`` of the setting ``key``.

    Handles bool, int, float, str, ``X | None`` (``none``/``null``) and ``tuple[X, ...]`` (comma-separated).
    """
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(text, inner, key)
    if origin is tuple:
        return tuple(coerce(part.strip(), args[0], key) for part in text.split(",") if part.strip())
    try:
        if hint is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        raise ConfigError(f"setting {key!r}: {text!r} is not a valid {hint.__name__}") from None
    raise ConfigError(f"setting {key!r} of type {hint} cannot be set from the command line")


def typed_overrides(cls: type, overrides: dict[str, str], what: str) -> dict[str, Any]:
    """Coerce string ``overrides`` to the field types of the dataclass ``cls``; unknown names are rejected."""
    check_known(cls, overrides, what)
    hints = typing.get_type_hints(cls)
    return {key: coerce(text, hints[key], key) for key, text in overrides.items()}


def apply_overrides(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """A copy of ``config`` with the string ``overrides`` applied (type-checked)."""
    return dataclasses.replace(config, **typed_overrides(TrainConfig, overrides, "training"))


def split_overrides(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Separate ``model.<field>`` overrides (returned second, prefix removed) from training overrides."""
    train = {k: v for k, v in overrides.items() if not k.startswith("model.")}
    model = {k.removeprefix("model."): v for k, v in overrides.items() if k.startswith("model.")}
    return train, model
