"""`ban visualize RUN_DIR`: pictures of what a trained run attends to.

VQA: per question, one PNG with a row per glimpse: the image with its boxes drawn with an opacity set by the
attention they got (summed over the question's tokens), and the bilinear attention map as a heatmap
(question tokens × boxes); title: the question, the predicted and the ground-truth answers.
Grounding: per caption, the image with each phrase's top-scoring box, one colour per phrase, and a legend.

    ban visualize runs/ban8 --questions 262148000 262148001 --images ~/coco/val2014
    ban visualize runs/ban8 --num 8 --random --seed 3 --out pictures/
    ban visualize runs/flickr --split test --captions 0 5 9 --images ~/flickr30k/images

Images are looked up by the COCO naming convention (``COCO_<subset>_<12-digit id>.jpg|png``; Flickr30k:
``<id>.jpg`` or ``.png``) in --images, by default in an ``images`` folder next to the prepared dataset (the synthetic
scenes have one). Without an image file the boxes are drawn on a blank canvas of the image's size; an image file
that cannot be read (not an image, truncated) is a :class:`DataError` naming it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ban.commands.arguments import non_negative_int, positive_int
from ban.commands.trained_run import add_run_arguments, load_trained_run
from ban.engine.config import resolve_device
from ban.errors import ConfigError, DataError
from ban.viz.report import default_image_dir, pick, picture_maker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by `ban train`")
    parser.add_argument("--split", default="val", help="split of the prepared dataset (default: val)")
    parser.add_argument("--questions", type=int, nargs="+", metavar="QID", help="VQA question ids to draw")
    parser.add_argument("--captions", type=int, nargs="+", metavar="INDEX",
                        help="grounding: positions of the captions in the split to draw")
    parser.add_argument("--num", type=positive_int, default=4,
                        help="without --questions/--captions: how many (default 4)")
    parser.add_argument("--random", action="store_true", help="draw --num at random instead of the first ones")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of --random (default 0)")
    parser.add_argument("--images", type=Path, help="image folder (COCO file names; Flickr30k: <id>.jpg or .png)")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/attention/<split>)")
    add_run_arguments(parser, default_device="cpu", shared=False)


def run(args: argparse.Namespace) -> int:
    if args.images is not None and not args.images.is_dir():
        raise DataError("no such image folder", path=args.images)
    device = resolve_device(args.device, "--device")  # one this machine lacks: said before anything is loaded
    loaded = load_trained_run(args)
    task = loaded.config.task
    wanted = args.captions if task == "grounding" else args.questions
    other = args.questions if task == "grounding" else args.captions
    if other:
        raise ConfigError("--questions selects VQA questions, --captions grounding captions; this run is "
                          f"{task}")
    image_dir = args.images or default_image_dir(loaded.data_dir, task)
    maker = picture_maker(loaded.model.to(device), loaded.config, loaded.data_dir, args.split, image_dir, device)
    out = args.out or Path(args.run_dir) / "attention" / args.split
    missing = 0
    for index in pick(maker, wanted, args.num, args.random, args.seed):
        path, example = maker.write(index, out)
        missing += not example.image_found
        print(f"{path}" + ("" if example.image_found else f"  (no matching image file for image {example.image_id}: "
                                                         "boxes drawn on a blank canvas)"))
    if missing and image_dir is None:
        print("no image folder given or found: pass --images DIR to draw on the images")
    return 0
