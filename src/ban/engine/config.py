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

from ban.config_types import check_types
from ban.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about training that is not the model (PAPER.md §4 by default).

    The learning rate of epoch ``e`` is ``lr × warmup[e]`` during the warm-up epochs, then ``lr × warmup[-1]``,
    multiplied by ``decay_rate`` at each epoch listed in ``decay_epochs`` (see :mod:`ban.engine.schedule`).
    ``batch_size`` is the global batch: under ``torchrun`` it is split across the processes. ``resident`` copies
    the training splits onto the training device once and gathers each batch there instead of running a data
    loader (VQA; :mod:`ban.data.resident`). ``bucket_boxes`` batches images of similar box counts together
    (:class:`ban.engine.distributed.ShardedBatches`; VQA): less padding and fewer distinct shapes, but batches are
    no longer uniform samples of the data (its accuracy effect is measured in benchmarks/RESULTS.md).
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
    decay_epochs: tuple[int, ...] = (10, 12)
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
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.lr <= 0 or self.batch_size <= 0 or self.epochs < 0 or self.eval_batch_size <= 0:
            raise ConfigError("lr, batch_size and eval_batch_size must be positive and epochs non-negative")
        if len(self.betas) != 2:
            raise ConfigError(f"betas needs two values, got {self.betas!r}")
        if not self.train_splits:
            raise ConfigError("train_splits must name at least one split")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f, v in _items(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: tuple(v) if _is_tuple(hints[k]) else v for k, v in data.items()})


# The synthetic scenes run (`ban train` with no --data), tuned to finish in minutes on a 2-core CPU. Measured: on
# 2,800 images (10.8k training questions) the tiny model memorised the questions and, depending on float summation
# order, reached 48-71 % after 16 epochs; on 5,600 images (21.6k questions) it reads the scenes from epoch 5 on and
# reaches 81.3 / 81.8 % (seeds 1204 / 2) after 10 epochs. With the recipe's batch 256 and warm-up, or with dropout,
# it stays at the question-only baseline for many epochs.
SYNTHETIC_TRAINING: dict[str, Any] = {"batch_size": 32, "epochs": 10, "lr": 2e-3, "warmup": (), "decay_epochs": ()}


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
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    typed = {}
    for key, text in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown {what} setting {key!r}; known: {', '.join(sorted(names))}")
        typed[key] = coerce(text, hints[key], key)
    return typed


def apply_overrides(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """A copy of ``config`` with the string ``overrides`` applied (type-checked)."""
    return dataclasses.replace(config, **typed_overrides(TrainConfig, overrides, "training"))


def split_overrides(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Separate ``model.<field>`` overrides (returned second, prefix removed) from training overrides."""
    train = {k: v for k, v in overrides.items() if not k.startswith("model.")}
    model = {k.removeprefix("model."): v for k, v in overrides.items() if k.startswith("model.")}
    return train, model
