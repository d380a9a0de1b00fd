"""``ban prepare vqa2|flickr30k``: raw dataset files → a prepared dataset directory that training reads."""

from __future__ import annotations

import argparse

from ban.commands import prepare_flickr30k, prepare_vqa2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    help_text = "VQA 2.0: official questions/annotations + region features (+ GloVe, Visual Genome)"
    vqa2 = datasets.add_parser("vqa2", help=help_text, description=help_text)
    prepare_vqa2.add_arguments(vqa2)
    vqa2.set_defaults(_run_dataset=prepare_vqa2.run)
    help_text = "Flickr30k Entities: sentences/annotations + region features"
    flickr30k = datasets.add_parser("flickr30k", help=help_text, description=help_text)
    prepare_flickr30k.add_arguments(flickr30k)
    flickr30k.set_defaults(_run_dataset=prepare_flickr30k.run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen dataset's preparation."""
    return int(args._run_dataset(args) or 0)
