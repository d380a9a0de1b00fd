"""Training checkpoints: one safetensors file holding weights, optimizer state and RNG states.

Layout of the file (no pickle anywhere):

- tensors ``model/<name>`` — the model's state dict;
- tensors ``optimizer/<param index>/<name>`` — per-parameter optimizer state (Adamax: step, exp_avg, exp_inf);
- tensors ``rng/<name>`` — random generator states (one per process under torchrun);
- metadata ``format``, ``optimizer`` (JSON: param groups and non-tensor state), ``state`` (JSON: epoch, step,
  history … whatever the trainer passes) and ``written`` (a random id of this save).

The file is written to a temporary name and renamed, so it is always either the old or the new checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ban.data.atomic import write_with
from ban.errors import CheckpointError
from ban.nn.counting import CountingModule
from ban.numbers import is_int, is_number

# the float types weights and optimizer state may have in a checkpoint (ours or the authors')
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

FORMAT = "ban-checkpoint/1"


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``model``'s weights, ``optimizer``'s state, ``rng`` tensors and the JSON-able ``state`` atomically.

    A write that finds no room (a full disk or quota, a file-size limit) raises a :class:`~ban.errors.DataError`
    naming ``path`` (:func:`ban.data.atomic.atomic_path`); the earlier file at ``path`` is kept."""
    tensors = {f"model/{k}": _cpu(v) for k, v in model.state_dict().items()}
    optimizer_meta: dict[str, Any] = {}
    if optimizer is not None:
        optimizer_state = optimizer.state_dict()
        optimizer_meta = {"param_groups": optimizer_state["param_groups"], "scalars": {}}
        for index, entry in optimizer_state["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{index}/{name}"] = _cpu(value)
                else:
                    optimizer_meta["scalars"].setdefault(str(index), {})[name] = value
    for name, value in (rng or {}).items():
        tensors[f"rng/{name}"] = _cpu(value)
    metadata = {"format": FORMAT, "state": json.dumps(state), "optimizer": json.dumps(optimizer_meta),
                "written": uuid.uuid4().hex}  # tells two saves of the same state apart (Checkpoint._part)
    write_with(path, lambda temp: _save_file(tensors, temp, metadata))


# how safetensors words an error of the system in its own (the number: "… (os error 28)", or "Os { code: 28, …")
_OS_ERROR = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``; the error it raises for a failed write of the file (its own type, with the
    system's error number in the text) raised as the :class:`OSError` it was, which the callers know."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as error:
        found = _OS_ERROR.search(str(error))
        if found is None:
            raise
        number = int(found.group(1) or found.group(2))
        raise OSError(number, os.strerror(number), str(path)) from error


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()


class Checkpoint:
    """A checkpoint file read back: ``model`` and ``rng`` tensors, the ``state`` dict, the optimizer state.

    Opening it reads the header only (format, ``state``, optimizer metadata); each part's tensors are read when
    first used, so the training position of a paper-size checkpoint (about 1 GB) is cheap to look at and the
    weights are read without the optimizer state. A part read from a file that another checkpoint has replaced
    since the header was read is refused: the parts of one object always come from one file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError("no checkpoint here (was the run trained for at least one step?)", path=path)
        with self._opened() as handle:
            metadata = self._metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"format is {metadata.get('format')!r}, expected {FORMAT!r}", path=path)
        try:
            self.state: dict[str, Any] = json.loads(metadata["state"])
            self._optimizer_meta: dict[str, Any] = json.loads(metadata["optimizer"])
        except (KeyError, ValueError, RecursionError) as error:
            raise CheckpointError(f"malformed metadata ({type(error).__name__}: {error})", path=path) from None
        if not isinstance(self.state, dict) or not isinstance(self._optimizer_meta, dict):
            raise CheckpointError("malformed metadata: 'state' and 'optimizer' must be JSON objects", path=path)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Any]:
        """The file opened by safetensors; its own error types for a malformed file become a CheckpointError."""
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                yield handle
        except CheckpointError:  # raised while reading it, with its own message
            raise
        except Exception as error:  # safetensors raises its own types for malformed files
            raise CheckpointError(f"not a readable safetensors file ({error})", path=self.path) from None

    def _part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose names begin with ``prefix``, by the rest of their names."""
        with self._opened() as handle:
            if (handle.metadata() or {}) != self._metadata:
                raise CheckpointError("replaced by another checkpoint while being read (a run still writing it?): "
                                      "read it again", path=self.path)
            return {key[len(prefix):]: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}

    @functools.cached_property
    def model(self) -> dict[str, torch.Tensor]:
        """The model's state dict."""
        return self._part("model/")

    @functools.cached_property
    def rng(self) -> dict[str, torch.Tensor]:
        """Random generator states by name (``torch_cpu/<rank>`` …)."""
        return self._part("rng/")

    @functools.cached_property
    def optimizer_tensors(self) -> dict[str, torch.Tensor]:
        """The optimizer's per-parameter state tensors by ``<param index>/<name>``."""
        return self._part("optimizer/")

    def load_model(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model`` (strict: names, shapes and dtypes must match; values must be finite)."""
        expected = model.state_dict()
        for name, tensor in self.model.items():
            if name in expected and tensor.dtype != expected[name].dtype:
                raise CheckpointError(f"dtype {tensor.dtype}, the model's is {expected[name].dtype}", path=self.path,
                                      field=name)
            if name in expected and tensor.shape != expected[name].shape:  # PyTorch would load [1] into a 0-dim one
                raise CheckpointError(f"shape {list(tensor.shape)}, the model's is {list(expected[name].shape)}",
                                      path=self.path, field=name)
            _check_finite(tensor, self.path, name)
            check_weight_direction(tensor, self.path, name)
        try:
            model.load_state_dict(self.model, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"weights do not fit the model: {error}", path=self.path) from None

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore ``optimizer``'s state (tensors are moved to the parameters' devices by PyTorch)."""
        if not self._optimizer_meta:
            raise CheckpointError("the checkpoint holds no optimizer state", path=self.path)
        state: dict[int, dict[str, Any]] = {}
        try:
            for key, value in self.optimizer_tensors.items():
                _check_finite(value, self.path, f"optimizer/{key}")
                index, name = key.split("/", 1)
                state.setdefault(int(index), {})[name] = value
            for index, scalars in self._optimizer_meta["scalars"].items():
                state.setdefault(int(index), {}).update(scalars)
            optimizer.load_state_dict({"state": state, "param_groups": _placed_groups(
                self._optimizer_meta["param_groups"], optimizer.param_groups)})
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as error:
            raise CheckpointError(f"optimizer state does not fit: {type(error).__name__}: {error}",
                                  path=self.path) from None
        for group in optimizer.param_groups:  # PyTorch does not check the shapes of the per-parameter state
            for parameter in group["params"]:
                for name, value in optimizer.state.get(parameter, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() and value.shape != parameter.shape:
                        raise CheckpointError(f"shape {list(value.shape)}, its parameter's is "
                                              f"{list(parameter.shape)}", path=self.path, field=f"optimizer/{name}")


def _placed_groups(saved: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The saved parameter groups with the running optimizer's ``capturable`` (where its state lives is this run's
    choice: step counters on the device for CUDA graphs, on the CPU otherwise; PyTorch places them by the loaded
    groups' setting)."""
    return [{**group, "capturable": now["capturable"]} if isinstance(group, dict) and "capturable" in now else group
            for group, now in zip(saved, current, strict=False)] + saved[len(current):]


def _check_finite(tensor: torch.Tensor, path: Path, name: str) -> None:
    """A checkpoint never holds NaN or infinite values (a diverged run stops before writing one), nor floats of a
    kind ban never writes (float8)."""
    if tensor.is_floating_point() and tensor.dtype not in WEIGHT_DTYPES:
        raise CheckpointError(f"values of type {tensor.dtype}, which ban never writes", path=path, field=name)
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise CheckpointError("holds NaN or infinite values", path=path, field=name)


# ban's names of the weights a layer divides by their own norm: a weight-normalised layer's direction, and the
# slopes of a counting function the counter uses (``ban.nn.counting.PiecewiseLinear``: |w| / Σ|w|)
_SELF_NORMALISED = re.compile(
    rf".*weight_v|(?:.*\.)?functions\.({'|'.join(map(str, range(CountingModule.USED_FUNCTIONS)))})\.weight")


def check_weight_direction(tensor: torch.Tensor, path: str | Path, name: str, field: str | None = None) -> None:
    """A weight that its layer divides by its own norm (:data:`_SELF_NORMALISED`, ``name`` as ban names it) is
    never all zeros: 0/0 would make every output NaN. The error names ``field`` (default: ``name``)."""
    if _SELF_NORMALISED.fullmatch(name) and not tensor.any():
        raise CheckpointError("all zeros: its layer divides this by its norm, so every output would be NaN",
                              path=path, field=field or name)


# the numbers every epoch record of a checkpoint's history holds
HISTORY_NUMBERS = ("epoch", "lr", "train_loss", "train_score", "samples", "seconds", "samples_per_s")


def read_position(checkpoint: Checkpoint) -> dict[str, Any]:
    """The training position a checkpoint holds (``epoch``, ``step``, ``history``, ``partial``), checked."""
    state = checkpoint.state
    if "imported" in state:
        raise CheckpointError(f"weights imported from {state['imported']} (`ban import`): no training position or "
                              "optimizer state to resume; train a new run", path=checkpoint.path, field="state")
    history, partial = state.get("history"), state.get("partial")
    valid = (all(is_int(state.get(k)) and state[k] >= 0 for k in ("epoch", "step"))
             and isinstance(history, list) and len(history) == state["epoch"]
             and all(isinstance(r, dict) and all(is_number(r.get(k)) for k in HISTORY_NUMBERS) for r in history)
             and isinstance(partial, dict) and all(is_number(v) for v in partial.values()))
    if not valid:
        raise CheckpointError("malformed training position: expected epoch and step counts, one metrics record "
                              "per finished epoch and the partial sums of the current one", path=checkpoint.path,
                              field="state")
    return state
