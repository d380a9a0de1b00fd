"""``ban prepare flickr30k``: Flickr30k Entities + region features → a prepared grounding dataset."""

from __future__ import annotations

import argparse
import json

from ban.commands.arguments import add_feature_arguments
from ban.data.flickr30k_prepare import ENTITY_POSITIONS, SPLITS, prepare_flickr30k
from ban.official import read_dictionary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True,
                        help="folder with the official Sentences/, Annotations/ and train.txt, val.txt, test.txt")
    add_feature_arguments(parser)
    parser.add_argument("--out", required=True, help="prepared dataset directory to write")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), metavar="SPLIT",
                        help=f"splits to prepare (default: {' '.join(SPLITS)})")
    parser.add_argument("--dictionary", metavar="FILE",
                        help="a dictionary to encode with: ban's dictionary.json, or the reference's dictionary.pkl "
                             "(its token ids, as its checkpoints expect) (default: built from the captions)")
    parser.add_argument("--glove", metavar="FILE",
                        help="GloVe text file (e.g. glove.6B.300d.txt): glove.npy initialises the word table, as "
                             "the reference does (default: none, the table starts random)")
    parser.add_argument("--entity-positions", choices=ENTITY_POSITIONS, default=ENTITY_POSITIONS[0],
                        help="the token whose GRU state stands for each phrase: 'tokens', the phrase's last token "
                             "in the caption as tokenised (ban's fix); 'reference', the authors' procedure (the "
                             "last word of the phrase's first occurrence in the caption split on single spaces: "
                             "one word too far after a ' , ', a repeated phrase's first occurrence, sometimes past "
                             "the caption), which their released Flickr30k model was trained and evaluated on: use "
                             "it to reproduce that model with `ban import` (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    dictionary = None if args.dictionary is None else read_dictionary(args.dictionary)
    manifest = prepare_flickr30k(args.root, args.features, args.out, splits=args.splits, dictionary=dictionary,
                                 glove=args.glove, feature_dtype=args.feature_dtype,
                                 entity_positions=args.entity_positions, progress=not args.json)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(f"wrote {args.out}: {manifest['num_tokens']} tokens, token rows of {manifest['sentence_length']} "
          f"(the longest caption{' or entity position' if manifest['entity_positions'] == 'reference' else ''}), "
          f"up to {manifest['max_entities']} entities"
          + (", the reference's entity positions" if manifest["entity_positions"] == "reference" else ""))
    for split, summary in manifest["splits"].items():
        print(f"  {split:<6} {summary['images']:>6} images {summary['sentences']:>7} captions "
              f"{summary['entities_with_ground_truth']:>7} entities with boxes, "
              f"upper bound {summary['upper_bound']:.2f}%")
    return 0
