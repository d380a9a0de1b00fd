"""``ban prepare vqa2``: official VQA 2.0 files + region features (+ GloVe, Visual Genome) → a prepared VQA
dataset."""

from __future__ import annotations

import argparse
import json

from ban.commands.arguments import add_feature_arguments, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, metavar="RAW_DIR",
                        help="folder with the official v2_OpenEnded_mscoco_*_questions.json and "
                             "v2_mscoco_*_annotations.json files (every split present is prepared)")
    add_feature_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="prepared dataset directory to write")
    parser.add_argument("--glove", metavar="FILE", help="GloVe text vectors (glove.6B.300d.txt) to initialise "
                        "the word embeddings")
    parser.add_argument("--vg", metavar="DIR", help="Visual Genome folder with question_answers.json and "
                        "image_data.json (adds the vg-train / vg-val splits)")
    parser.add_argument("--min-answer-count", type=positive_int, default=9, metavar="N",
                        help="candidate answers: those given as multiple-choice answer of at least N train+val "
                             "questions (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", metavar="SPLIT", choices=["train", "val", "test-dev", "test"],
                        help="prepare only these splits (default: every split whose question file is present)")
    parser.add_argument("--feature-dim", type=positive_int, metavar="D",
                        help="expected feature width (default: that of the first record)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from ban.data.vqa2 import prepare_vqa2

    manifest = prepare_vqa2(
        args.root, args.features, args.out, glove=args.glove, visual_genome=args.vg,
        min_answer_count=args.min_answer_count, splits=args.splits, feature_dim=args.feature_dim,
        feature_dtype=args.feature_dtype, progress=not args.json,
    )
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(f"wrote {args.out}: {manifest['num_tokens']} tokens, {manifest['num_answers']} candidate answers, "
          f"{manifest['num_images']} images with {manifest['feature_dim']}-d features")
    for split, summary in manifest["splits"].items():
        kind = "annotated" if summary["annotated"] else "no annotations"
        print(f"  {split:<9} {summary['questions']:>8} questions ({kind})")
    return 0
