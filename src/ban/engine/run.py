"""A run directory: ``config.json`` (rebuilds the exact model), ``checkpoint.safetensors``, ``metrics.jsonl``.

``config.json`` records the task, the prepared dataset it was trained on, the model and training configs, and
SHA-256 fingerprints of the dataset's vocabulary files (dictionary.json, answers.json): a checkpoint is only
meaningful with the same token and answer indices, so using it with other data is an error. A fingerprint of
the dataset's manifest (its splits and their sizes) catches a resumed run pointed at another dataset; the
features themselves are not fingerprinted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ban.data.atomic import make_directory, write_json
from ban.data.jsonfile import read_json, read_json_object
from ban.data.prepared import ANSWERS, DICTIONARY, MANIFEST, manifest_size, read_manifest
from ban.data.textfile import resolve_path
from ban.engine.checkpoint import Checkpoint, read_position
from ban.engine.config import TrainConfig, check_new_training
from ban.engine.reporting import CURVES_FILE, METRICS_FILE, REPORT_DIR, TENSORBOARD_DIR, recorded_epochs
from ban.engine.tasks import dataset_task
from ban.errors import CheckpointError, ConfigError, DataError
from ban.models import BANConfig, build_model

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_FILE = "best.safetensors"  # the weights of the epoch with the best validation score
CHECKPOINTS = {"last": CHECKPOINT_FILE, "best": BEST_FILE}
# what `ban train` writes in a run directory: nothing else may be written over them
RUN_CONTENTS = (CONFIG_FILE, CHECKPOINT_FILE, BEST_FILE, METRICS_FILE, CURVES_FILE, TENSORBOARD_DIR, REPORT_DIR)
VOCABULARY_FILES = (DICTIONARY, ANSWERS)
FORMAT = "ban-run/1"
# what a resumed run may change
RESUME_CHANGEABLE = ("train.epochs", "train.eval_batch_size", "train.num_workers", "train.skip_nonfinite",
                     "train.cuda_graphs", "train.compile")


def fingerprint(data_dir: str | Path) -> dict[str, str]:
    """SHA-256 of each vocabulary file present in the prepared dataset ``data_dir`` and of its manifest (without
    ``root``, where the raw files lay: the same data prepared again elsewhere is the same data)."""
    prints = {}
    for name in VOCABULARY_FILES:
        path = Path(data_dir) / name
        if path.is_file():
            prints[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    if (Path(data_dir) / MANIFEST).is_file():
        manifest = read_json(Path(data_dir) / MANIFEST)
        if isinstance(manifest, dict):
            manifest.pop("root", None)
        prints[MANIFEST] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return prints


@dataclass
class RunConfig:
    """Everything that defines a run."""

    task: str
    data_dir: str
    model: BANConfig
    train: TrainConfig
    fingerprint: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "task": self.task, "data_dir": self.data_dir, "model": self.model.to_dict(),
                "train": self.train.to_dict(), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if data.get("format") != FORMAT:
            raise ConfigError(f"run config format is {data.get('format')!r}, expected {FORMAT!r}")
        for name, kind in (("task", str), ("data_dir", str), ("model", dict), ("train", dict), ("fingerprint", dict)):
            if not isinstance(data.get(name, {}), kind):
                raise ConfigError(f"run config field {name!r} must be a {kind.__name__}")
        return cls(data["task"], data["data_dir"], BANConfig.from_stored(data["model"]),
                   TrainConfig.from_dict(data["train"]), dict(data.get("fingerprint", {})))

    def differences(self, other: RunConfig) -> list[str]:
        """Names of the settings that differ (``model.<field>``, ``train.<field>``, ``task``, and ``fingerprint``
        for another dataset: the files this config has fingerprints of, so a run from before a file was
        fingerprinted still compares; ``data_dir``, where the dataset lies, is not compared: it may move)."""
        mine, theirs = self.to_dict(), other.to_dict()
        names = ["task"] if mine["task"] != theirs["task"] else []
        if any(theirs["fingerprint"].get(name) != digest for name, digest in mine["fingerprint"].items()):
            names.append("fingerprint")
        for part in ("model", "train"):
            names += [f"{part}.{k}" for k in mine[part] if mine[part][k] != theirs[part].get(k)]
        return names


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The run config stored in ``run_dir``."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).exists():
        raise ConfigError(f"{run_dir}: no such directory")
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    data = read_json_object(path)
    try:
        return RunConfig.from_dict(data)
    except KeyError as error:
        raise DataError(f"malformed run config (missing {error})", path=path) from None
    except ConfigError as error:
        raise DataError(f"malformed run config ({error})", path=path) from None


RESUME_OR_ELSEWHERE = "continue it with --resume or choose another --out"  # `ban train`'s advice for a taken --out


def check_checkpoint_not_lost(run_dir: Path) -> None:
    """:class:`CheckpointError` for a run to resume that has no checkpoint although ``metrics.jsonl`` records
    finished epochs (it is written after each epoch's checkpoint, so that checkpoint was deleted or lost): starting
    over would overwrite the epochs' metrics and ``best.safetensors``. A run stopped before its first checkpoint
    has no metrics yet and starts from the beginning."""
    epochs = len(recorded_epochs(run_dir))
    if epochs:
        raise CheckpointError(f"missing, but {run_dir / METRICS_FILE} records {epochs} finished "
                              f"epoch{'s' * (epochs != 1)}: "
                              f"restore the checkpoint to resume, or start a new run in another --out (resuming "
                              f"without it would train from the beginning over those results)",
                              path=run_dir / CHECKPOINT_FILE)


def start_run(run_dir: str | Path, run: RunConfig, resume: bool, *,
              held: str = RESUME_OR_ELSEWHERE) -> dict[str, Any] | None:
    """Create the run directory with its config, or check that a resumed run has the same config; → the resumed
    run's training position (:func:`ban.engine.checkpoint.read_position`; None for a new run or one without a
    checkpoint yet).

    A new run's training settings must pass :func:`ban.engine.config.check_new_training`; it refuses a directory
    that already holds a run (``held``: what to do instead, for the command that
    asked; by default ``ban train``'s), or other files; ``resume`` refuses a different config,
    except ``train.epochs`` (more to train longer; not fewer than the checkpoint has begun, :func:`check_epochs`),
    ``train.skip_nonfinite`` (to get past a batch that made the run stop) and the settings that change how the
    run executes, not what it computes: ``train.eval_batch_size``, ``train.num_workers``, ``train.cuda_graphs``,
    ``train.compile``. Resuming a run without its checkpoint is refused where epochs had finished
    (:func:`check_checkpoint_not_lost`).
    """
    run_dir = Path(run_dir)
    if resume:
        stored = read_run_config(run_dir)
        changed = [name for name in stored.differences(run) if name not in RESUME_CHANGEABLE]
        if "fingerprint" in changed:
            files = sorted(name for name, digest in stored.fingerprint.items() if run.fingerprint.get(name) != digest)
            raise ConfigError(f"cannot resume {run_dir} on {run.data_dir}: it is not the prepared dataset the run "
                              f"trained on ({', '.join(files)} differ{'s' * (len(files) == 1)}; it trained on "
                              f"{stored.data_dir}): resume it on that dataset or start a new run")
        if changed:
            raise ConfigError(f"cannot resume {run_dir} with a different configuration: {', '.join(changed)} "
                              f"{'differs' if len(changed) == 1 else 'differ'} from its config.json")
        checkpoint = run_dir / CHECKPOINT_FILE
        position = read_position(Checkpoint(checkpoint)) if checkpoint.exists() else None
        if position is not None:
            check_epochs(position, run.train.epochs)
        else:
            check_checkpoint_not_lost(run_dir)
    else:
        check_new_training(run.train)
        check_new_run_dir(run_dir, held)
        position = None
    make_directory(run_dir)
    write_json(run_dir / CONFIG_FILE, run.to_dict())
    return position


def check_new_run_dir(run_dir: str | Path, held: str = RESUME_OR_ELSEWHERE) -> None:
    """Refuse ``run_dir`` for a new run when it holds a run (``held``: what to do instead, see :func:`start_run`)
    or other files (e.g. ``--out runs/``, the folder of all runs)."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a run; {held}")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} holds other files and no run: give a new or empty folder as --out")


def check_epochs(position: dict[str, Any], epochs: int) -> None:
    """Refuse to resume with fewer ``epochs`` than the checkpoint's ``position`` has begun: the run dir would hold
    weights from an epoch its settings and metrics do not have."""
    begun = position["epoch"] + (position["step"] > 0)
    if epochs < begun:
        where = (f"in epoch {begun}" if position["step"] else f"after epoch {begun}")
        raise ConfigError(f"epochs={epochs} is fewer than the run has begun: its checkpoint is {where}; give "
                          f"--epochs {begun} or more")


def abandon_new_run(run_dir: str | Path) -> None:
    """Undo :func:`start_run` for a new run stopped by an error before its first checkpoint (a setting it cannot
    run with, a bad data file): its config.json goes (with a best.safetensors the failed epoch kept), and the
    directory if that leaves it empty, so the corrected command can start it afresh. A directory holding a
    checkpoint is left as it is, and so is any file the run did not write; never call it for a resumed run."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT_FILE).exists():
        return
    for name in (CONFIG_FILE, BEST_FILE):  # best.safetensors is written before the epoch's checkpoint
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def check_data(run: RunConfig, data_dir: str | Path) -> None:
    """Refuse a prepared dataset that is not there, prepared for another task, whose vocabulary files are missing or
    differ from the ones the run was trained with, or whose features have another width than the run's model
    reads."""
    if not Path(data_dir).is_dir():
        raise DataError("the run's prepared dataset is not there (moved or deleted?): give its place with --data "
                        "(in Python, load_run's data_dir)", path=data_dir)
    if (Path(data_dir) / MANIFEST).is_file() and (task := dataset_task(data_dir)) != run.task:
        raise DataError(f"a {task} dataset, but the run is a {run.task} model: give a dataset prepared for "
                        f"{run.task}", path=Path(data_dir) / MANIFEST, field="task")
    current = fingerprint(data_dir)
    for name, digest in run.fingerprint.items():
        if name not in VOCABULARY_FILES:  # another split list or size is fine for evaluating
            continue
        if name not in current:
            raise DataError("missing: the run was trained with one; this is not the dataset the run was trained on",
                            path=Path(data_dir) / name)
        if current[name] != digest:
            raise DataError(f"differs from the {name} the run was trained with (other vocabulary or answer "
                            "list); prepare the data with the same dictionary or train a new run",
                            path=Path(data_dir) / name)
    manifest = read_manifest(data_dir) if (Path(data_dir) / MANIFEST).is_file() else {}  # (missing: said when read)
    if "feature_dim" in manifest and manifest_size(data_dir, manifest, "feature_dim") != run.model.feature_dim:
        raise DataError(f"its features are {manifest['feature_dim']}-d; the run's model reads "
                        f"{run.model.feature_dim}-d ones",
                        path=Path(data_dir) / MANIFEST, field="feature_dim")


@dataclass
class LoadedRun:
    """A trained run: its model (eval mode, with the chosen checkpoint's weights), configs and dataset."""

    model: nn.Module
    config: RunConfig
    data_dir: Path


def check_not_run_output(target: str | Path, run_dir: str | Path, data_dir: str | Path, option: str) -> None:
    """Refuse an output file ``target`` (given as ``option``) that would overwrite what ``ban train`` wrote in
    ``run_dir`` (:data:`RUN_CONTENTS`) or anything in its prepared dataset ``data_dir`` (which ``ban prepare``
    replaces as a whole); any other name in the run directory, such as ``results.json``, is fine."""
    resolved, run = resolve_path(target, option), Path(run_dir).resolve()
    owned = [run / name for name in RUN_CONTENTS] + [Path(data_dir).resolve()]
    if any(resolved == path or path in resolved.parents for path in owned):
        raise ConfigError(f"{option} {target} would overwrite the run's or its dataset's own files: write it "
                          "elsewhere")


def load_run(run_dir: str | Path, data_dir: str | Path | None = None, checkpoint: str = "last") -> LoadedRun:
    """Rebuild the model of ``run_dir`` from its config.json and load the weights of its ``checkpoint``:
    ``"last"`` (the latest epoch) or ``"best"`` (the best validation epoch).

    ``data_dir`` overrides the dataset the run was trained on (its vocabulary must be the same).
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
    run = read_run_config(run_dir)
    data = Path(data_dir if data_dir is not None else run.data_dir)
    check_data(run, data)
    try:
        model = build_model(run.model)
    except ConfigError as error:  # sizes the run's config.json cannot have been trained with
        raise DataError(str(error), path=Path(run_dir) / CONFIG_FILE) from None
    path = Path(run_dir) / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not path.exists() and (Path(run_dir) / CHECKPOINT_FILE).exists():
        imported = Checkpoint(Path(run_dir) / CHECKPOINT_FILE).state.get("imported")
        validated = sum("val" in record for record in recorded_epochs(Path(run_dir)))
        why = (f"its weights were imported from {imported} (`ban import`)" if imported
               else "it trained without validation (its val_split is empty)" if not run.train.val_split
               else f"it is missing, though {METRICS_FILE} records {validated} validated epoch"
                    f"{'s' * (validated != 1)} (moved or deleted?)" if validated
               else "no epoch has finished its validation yet")
        raise CheckpointError(f"no best checkpoint: {why}; take the last epoch's weights (--checkpoint last)",
                              path=path)
    Checkpoint(path).load_model(model)
    model.eval()
    return LoadedRun(model, run, data)
