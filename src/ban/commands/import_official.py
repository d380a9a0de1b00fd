"""`ban import CHECKPOINT --data DATA_DIR --out RUN_DIR`: an authors' checkpoint as a run directory, so that
`ban evaluate`, `ban predict` and `ban visualize` compute with its weights on a prepared dataset.

The checkpoint's token ids must be the dataset's: a VQA 2.0 dataset prepared from all four question files has the
reference's dictionary, a Flickr30k Entities one prepared with ``--dictionary dictionary.pkl`` too. A VQA
checkpoint's classifier rows follow the reference's answer list (``--answers trainval_label2ans.pkl``); they are
put in the order of the dataset's ``answers.json``. The run's precision is fp32, as the reference computes.
The authors' Flickr30k model was trained and evaluated with the reference's entity positions: a grounding dataset
prepared with others (the default) gets a note on stderr saying how to prepare it for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ban.data.flickr30k_prepare import entity_positions_of
from ban.data.prepared import ANSWERS, DICTIONARY, read_answers, read_manifest, read_tokens
from ban.engine.checkpoint import save_checkpoint
from ban.engine.config import TrainConfig
from ban.engine.run import CHECKPOINT_FILE, RunConfig, abandon_new_run, check_data, fingerprint, start_run
from ban.engine.tasks import dataset_task
from ban.errors import ConfigError, DataError
from ban.official import load_official_checkpoint, read_dictionary, read_reference_answers, reorder_answers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="the authors' checkpoint (jnhwkim/ban-vqa's model_epochN.pth, VQA or Flickr30k)")
    parser.add_argument("--data", type=Path, required=True, metavar="DATA_DIR",
                        help="the prepared dataset to use it with; its token ids must be the checkpoint's")
    parser.add_argument("--answers", type=Path, metavar="FILE",
                        help="VQA (required): the reference's cache/trainval_label2ans.pkl, the answers of the "
                             "checkpoint's classifier rows in order")
    parser.add_argument("--dictionary", type=Path, metavar="FILE",
                        help="the reference's dictionary.pkl the checkpoint was trained with: checked to list the "
                             "dataset's words in the dataset's order (without it, only the counts are compared)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                        help="the run directory to write (new or empty)")


def run(args: argparse.Namespace) -> int:
    model = load_official_checkpoint(args.checkpoint)
    task = dataset_task(args.data)
    if model.config.task != task:
        raise ConfigError(f"{args.checkpoint} is a {model.config.task} checkpoint; {args.data} is a {task} dataset")
    check_same_tokens(args.data, model.config.num_tokens, args.dictionary)
    if task == "vqa":
        if args.answers is None:
            raise ConfigError("a VQA checkpoint needs --answers (the reference's cache/trainval_label2ans.pkl): "
                              "its classifier rows are in that list's order")
        reorder_answers(model, read_reference_answers(args.answers), read_answers(args.data), args.answers,
                        args.data / ANSWERS)
    elif args.answers is not None:
        raise ConfigError("--answers is for VQA checkpoints; a grounding model has no answer classifier")
    data_dir = args.data.resolve()
    run_config = RunConfig(task, str(data_dir), model.config, TrainConfig(precision="fp32"), fingerprint(data_dir))
    check_data(run_config, data_dir)  # what evaluate, predict and visualize will check: the feature width
    positions = entity_positions_of(data_dir, read_manifest(data_dir, "grounding")) if task == "grounding" else None
    start_run(args.out, run_config, resume=False, held="choose another --out (a new or empty folder)")
    try:
        save_checkpoint(args.out / CHECKPOINT_FILE, model, None, {"imported": str(args.checkpoint.resolve())})
    except BaseException:
        abandon_new_run(args.out)
        raise
    print(f"wrote {args.out}: {task} BAN with {model.config.num_glimpses} glimpse(s), hidden size "
          f"{model.config.hidden_dim}, from {args.checkpoint}; e.g. `ban evaluate {args.out} --split val`")
    if positions not in (None, "reference"):
        print(f"note: the authors' Flickr30k model was trained with the reference's entity positions; "
              f"{args.data} was prepared with `--entity-positions {positions}`: for their outputs, prepare it "
              "again with `ban prepare flickr30k … --entity-positions reference`", file=sys.stderr)
    return 0


def check_same_tokens(data_dir: Path, num_tokens: int, dictionary: Path | None) -> None:
    """Refuse a dataset whose token ids cannot be the checkpoint's: another count of tokens (``num_tokens``), or
    other words than the reference's ``dictionary`` (when given) at some id."""
    tokens, path = read_tokens(data_dir), data_dir / DICTIONARY
    if len(tokens) != num_tokens:
        raise DataError(f"{len(tokens)} tokens; the checkpoint's word table has {num_tokens}: the dataset was "
                        "prepared with another dictionary", path=path)
    if dictionary is not None:
        reference = read_dictionary(dictionary).tokens
        differing = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), None)
        if len(reference) != len(tokens) or differing is not None:
            where = (f"id {differing} is {tokens[differing]!r} here, {reference[differing]!r} there"
                     if differing is not None else f"{len(tokens)} tokens here, {len(reference)} there")
            raise DataError(f"other token ids than {dictionary} ({where})", path=path)
