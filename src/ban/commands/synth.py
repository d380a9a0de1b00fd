"""`ban synth`: write the synthetic scenes in the official VQA 2.0, bottom-up TSV and Flickr30k Entities formats.

ban synth --out data/synth                          # default size: 2,000 / 500 / 300 VQA images, 2048-d
ban synth --out data/synth --feature-dim 256        # narrower features for CPU training
ban synth --out data/big --images 82783 --no-png    # a VQA-2.0-sized set (≈ 440k questions)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ban.commands.arguments import non_negative_int, positive_int
from ban.data.atomic import atomic_path
from ban.data.synthetic import (
    ANNOTATOR_ACCURACY,
    DEFAULT_FEATURE_DIM,
    DEFAULT_IMAGES,
    QUESTIONS_PER_IMAGE,
    generate,
)
from ban.data.synthetic.detections import BOX_COUNTS, UNIFORM_COUNTS
from ban.data.synthetic.layout import MIN_IMAGES, OUTPUT_ENTRIES, STATS_FILE
from ban.data.synthetic.stats import format_stats
from ban.data.textfile import resolve_path
from ban.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: created if missing; an earlier `ban synth` output there is "
                             "replaced once the new one is complete (it is written beside it first, so the disk "
                             "needs room for both); any other non-empty directory is refused")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random seed; same seed → byte-identical output (default: 0)")
    parser.add_argument(
        "--images",
        type=positive_int,
        default=DEFAULT_IMAGES,
        help=f"VQA images over train / val / test-dev, 5 : 1.25 : 0.75, at least {MIN_IMAGES} (default "
             f"{DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--feature-dim",
        type=positive_int,
        default=DEFAULT_FEATURE_DIM,
        help=f"width of the region features (default {DEFAULT_FEATURE_DIM}, as bottom-up features)",
    )
    parser.add_argument(
        "--flickr-images",
        type=non_negative_int,
        default=None,
        help=f"Flickr30k-Entities-style images, split 80/10/10: 0 (none) or at least {MIN_IMAGES} (default "
             f"max({MIN_IMAGES}, 0.384 × --images))",
    )
    parser.add_argument(
        "--questions-per-image",
        type=float,
        default=QUESTIONS_PER_IMAGE,
        help=f"mean questions per VQA image, in [1, 20] (default {QUESTIONS_PER_IMAGE}, as VQA 2.0 train)",
    )
    parser.add_argument(
        "--annotator-accuracy",
        type=float,
        default=ANNOTATOR_ACCURACY,
        help=f"mean share of annotators giving the true answer, in [0.5, 1] (default {ANNOTATOR_ACCURACY})",
    )
    parser.add_argument("--boxes", choices=BOX_COUNTS, default=UNIFORM_COUNTS,
                        help="detector boxes per image: 10-36 (default), or bottom-up: 10–100, mean ≈ 31, as "
                             "bottom-up features and `ban bench --boxes adaptive` (the extra boxes are background)")
    parser.add_argument("--no-png", action="store_true", help="do not render the PNG images")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes (default: 1 under 400 images in all, else every core, at most 8)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with atomic_path(_replaceable(args.out)) as building:
        stats = _generate(args, building)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats, time.perf_counter() - start))
        print(f"written to {args.out}")
    return 0


def _replaceable(out: Path) -> Path:
    """``out`` with its symlinks resolved (a linked ``--out`` keeps its link), after refusing one that the new
    output would replace with something lost: a non-empty directory that is not a complete `ban synth` output, or
    one that holds anything else too."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise DataError("exists and is not a directory", path=out)
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries and not (out / STATS_FILE).is_file():
        raise DataError("is not empty and holds no complete `ban synth` output (stats.json), which a new run would "
                        "replace: choose a new or empty directory", path=out)
    foreign = [entry for entry in entries if entry.name not in OUTPUT_ENTRIES]
    if foreign:
        raise DataError("is not a `ban synth` output: a new run replaces the whole directory: move it elsewhere "
                        "or choose a new directory", path=foreign[0])
    return resolve_path(out, "out")


def _generate(args: argparse.Namespace, out: Path) -> dict:
    return generate(
        out,
        seed=args.seed,
        num_images=args.images,
        feature_dim=args.feature_dim,
        flickr_images=args.flickr_images,
        questions_per_image=args.questions_per_image,
        annotator_accuracy=args.annotator_accuracy,
        write_images=not args.no_png,
        box_counts=args.boxes,
        workers=args.workers,
        progress=not args.quiet,
    )
