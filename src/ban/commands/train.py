"""`ban train`: train BAN on a prepared dataset, or on the synthetic scenes when no --data is given.

    ban train                                   # tiny BAN on the synthetic scenes (minutes on a laptop CPU)
    ban train --data prepared/vqa2 --out runs/ban8            # the paper's recipe (docs/training.md)
    ban train --data prepared/vqa2 --preset paper-ablation --set model.num_glimpses=1 --set lr=7e-4
    ban train --out runs/ban8 --resume          # continue an interrupted run
    torchrun --nproc_per_node 4 -m ban.cli train --data …     # data parallel: one process's steps (own dropout)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from ban import launch
from ban.commands.arguments import non_negative_int
from ban.engine import distributed
from ban.engine.config import (
    SYNTHETIC_TRAINING,
    TrainConfig,
    apply_overrides,
    check_new_training,
    parse_assignments,
    reference_learning_rate,
    split_overrides,
    typed_overrides,
)
from ban.engine.reporting import METRICS_FILE
from ban.engine.run import (
    RunConfig,
    abandon_new_run,
    check_new_run_dir,
    fingerprint,
    read_run_config,
    start_run,
)
from ban.engine.synthetic import synthetic_dataset
from ban.engine.tasks import Task, check_splits, dataset_task, make_task
from ban.engine.trainer import TrainingDiverged, TrainingInterrupted, WeightsDiverged, resume_command, train
from ban.errors import ConfigError
from ban.models import PRESETS, BANConfig, preset

DEFAULT_PRESETS = {"vqa": "paper-best", "grounding": "grounding"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="prepared dataset dir (`ban prepare …`); default: the "
                        "synthetic scenes, generated once into $BAN_CACHE or ~/.cache/ban")
    parser.add_argument("--task", choices=("vqa", "grounding"),
                        help="default: the one --data was prepared for (without --data: vqa; on --resume: the run's)")
    parser.add_argument("--preset", help=f"model preset: {', '.join(PRESETS)} (default: "
                        "tiny on the synthetic scenes, paper-best for VQA data, grounding for Flickr30k)")
    parser.add_argument("--out", type=Path,
                        help="run directory (default: runs/<task>-h<hidden>-g<glimpses>-<date>-<time>)")
    parser.add_argument("--epochs", type=non_negative_int,
                        help="number of epochs (default: 13 as the paper's recipe; 10 on the synthetic scenes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting (lr, batch_size, seed, precision, …) or a model "
                        "field as model.<field> (e.g. model.num_glimpses=4); repeatable; the keys are listed below")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.epilog = (f"training settings (--set KEY=VALUE): {', '.join(f.name for f in fields(TrainConfig))}. "
                     f"Model fields (--set model.FIELD=VALUE): {', '.join(f.name for f in fields(BANConfig))}. "
                     "Their defaults and meaning: docs/training.md.")


def build_run(args: argparse.Namespace) -> RunConfig:
    """The run's complete configuration from the arguments (and, with --resume, the stored config)."""
    stored = read_run_config(args.out) if args.resume else None
    task_name = args.task or (stored.task if stored else dataset_task(args.data) if args.data is not None else "vqa")
    synthetic = args.data is None and stored is None
    train_overrides, model_overrides = split_overrides(parse_assignments(args.overrides))
    if args.epochs is not None:
        if "epochs" in train_overrides:
            raise ConfigError(f"--epochs {args.epochs} and --set epochs={train_overrides['epochs']} both given: "
                              "give one")
        train_overrides["epochs"] = str(args.epochs)
    base = stored.train if stored else TrainConfig(**SYNTHETIC_TRAINING) if synthetic else TrainConfig()
    # the settings first: a misspelt or bad one is refused before the synthetic scenes are made (a minute or more)
    training = apply_overrides(base, train_overrides)
    if stored is None and not synthetic and task_name == "vqa":
        training = reference_learning_rate(training, train_overrides)
    if stored is None:
        check_new_training(training)
    typed_overrides(BANConfig, model_overrides, "model")  # only checked here; applied by build_model_config
    if args.data is not None:
        data_dir = args.data.resolve()
    elif stored is not None:
        data_dir = Path(stored.data_dir)
    elif task_name == "grounding":
        raise ConfigError("grounding needs --data (a prepared Flickr30k Entities dir)")
    else:
        data_dir = synthetic_dataset()
    task = make_task(task_name, data_dir)
    # --resume keeps the run's training settings, and its model unless --preset names one (checked against it)
    kept_model = stored.model if stored is not None and args.preset is None else None
    model = build_model_config(kept_model, args.preset, task, synthetic, model_overrides)
    if stored is None and model.task == "grounding" and model.num_glimpses != 1:  # (runs from before may resume)
        raise ConfigError(f"grounding trains one glimpse (G = 1, as the reference: its logits are that glimpse's "
                          f"attention, so others would learn nothing), got model.num_glimpses={model.num_glimpses}")
    check_splits(training, task)
    return RunConfig(task_name, str(data_dir), model, training, fingerprint(data_dir))


def build_model_config(stored: BANConfig | None, preset_name: str | None, task: Task, synthetic: bool,
                       overrides: dict[str, str]) -> BANConfig:
    """The ``stored`` model (--resume without --preset) or the preset, with the ``model.<field>`` ``overrides``
    and the sizes the data fixes; an override or a model that contradicts the data or the task is a
    :class:`ConfigError`."""
    values = typed_overrides(BANConfig, overrides, "model")
    if "task" in values and values["task"] != task.name:
        raise ConfigError(f"model.task={values['task']} contradicts the task ({task.name}); choose it with --task")
    sizes = task.model_sizes()
    for name, value in sizes.items():
        if name in values and values[name] != value:
            raise ConfigError(f"model.{name}={values[name]} contradicts the data ({name} = {value})")
    if stored is not None:
        model, source = stored.replace(**values), "the run's stored model"
    else:
        name = preset_name or ("tiny" if synthetic else DEFAULT_PRESETS[task.name])
        model, source = preset(name, **{**values, **sizes}), f"preset {name!r}"
    if model.task != task.name:
        fitting = ", ".join(name for name in PRESETS if preset(name).task == task.name)
        raise ConfigError(f"{source} is a {model.task} model, but the task is {task.name} (presets for "
                          f"{task.name}: {fitting})")
    return model


def default_run_dir(run: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{run.task}-h{run.model.hidden_dim}-g{run.model.num_glimpses}-{stamp}"


def run(args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    main_process = launch.is_main_process()
    if launch.world_size() > 1 and args.out is None:
        raise ConfigError("under torchrun, give --out RUN_DIR (every process must use the same run dir)")
    if args.out is not None and not args.resume:
        # before anything is built (the synthetic scenes take a minute or more); in every process, none of which has
        # joined the process group yet (a process left alone would wait there for the others), so said once
        try:
            check_new_run_dir(args.out)
        except ConfigError as taken:
            raise distributed.everywhere(taken) from None
    config = build_run(args)
    run_dir = args.out or default_run_dir(config)
    task = make_task(config.task, config.data_dir)
    # the process group joined before the main process checks and writes the run dir, so that its refusal (a
    # changed config on --resume…) reaches every process; train() finds it joined
    context = distributed.setup(config.train.device)
    try:
        distributed.barrier(context)  # every process has checked --out above before the main one makes the run dir
        position = distributed.on_main(lambda: start_run(run_dir, config, args.resume), context)  # the resumed run's
    except BaseException:
        distributed.teardown()
        raise
    if main_process:
        print(f"run dir: {run_dir}\nmodel: {config.model}\ntraining: {config.train}", file=sys.stderr)
    finished = position is not None and position["epoch"] >= config.train.epochs > 0
    try:
        history = train(run_dir, config, task, resume=args.resume)
    except TrainingInterrupted as stopped:
        if main_process:
            print(f"ban train: interrupted: {stopped}", file=sys.stderr)
        return 130
    except BaseException as error:  # noqa: BLE001 - re-raised; only the run dir is tidied
        # stopped before its first checkpoint (cuda_graphs on a CPU, a bad data file, a crash, Ctrl-C before the
        # training loop took over the signal, weights gone non-finite…): the corrected command may use the same
        # --out. A run stopped by a non-finite loss stays: its message says how to resume it (skip_nonfinite).
        resumable = isinstance(error, TrainingDiverged) and not isinstance(error, WeightsDiverged)
        if main_process and not args.resume and not resumable:
            abandon_new_run(run_dir)
        raise
    if finished and main_process:
        epochs = config.train.epochs
        print(f"nothing left to train: {run_dir} has finished its {epochs} epoch{'s' * (epochs != 1)}; train it "
              f"further with: {resume_command(run_dir, launch.world_size())} --epochs N (N > {epochs})")
    elif history and main_process:
        full = (f"; the last validation in full: ban evaluate {run_dir} --split {config.train.val_split} --json"
                if "val" in history[-1] else "")
        epochs = f"{len(history)} epoch{'s' * (len(history) != 1)}"
        print(f"done: {epochs}, every epoch's numbers in {Path(run_dir) / METRICS_FILE}{full}")
    elif main_process:
        print(f"nothing trained (epochs={config.train.epochs}): {run_dir} holds the run's settings only; train it "
              f"with: {resume_command(run_dir, launch.world_size())} --epochs N")
    return 0

