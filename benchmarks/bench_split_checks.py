"""What the checks made when a prepared split is opened cost at VQA 2.0 size (session 15), each timed alone.

    python benchmarks/bench_split_checks.py [--repeats 5] [--json FILE]

Builds, in a temporary folder, what `VQADataset` checks against: a feature store index of 123,287 images (one
4-d box each: the checks read the index, never the features), a dictionary.json of 19,901 tokens and an
answers.json of 3,129 answers; and the arrays of a train split of 443,757 questions (shuffled distinct ids, images
drawn from the store, 14 token ids each). Times each check of ``ban.data`` on them (median and minimum of
``--repeats``): the duplicate question ids, the store holding every image, the manifest against dictionary.json and
the store, answers.json read and checked for repeats, the token-id range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ban.data.atomic import write_json
from ban.data.distinct import repeated_positions
from ban.data.features import FeatureRecord, FeatureStore
from ban.data.features_writer import write_feature_store
from ban.data.prepared import check_manifest_sizes, check_token_ids, read_answers
from ban.machine import describe_machine

IMAGES, QUESTIONS, TOKENS, ANSWERS, LENGTH = 123_287, 443_757, 19_901, 3_129, 14


def build(root: Path, generator: np.random.Generator) -> tuple[FeatureStore, dict, dict[str, np.ndarray]]:
    """The store, the manifest fields the checks read, and the split's arrays, under ``root``."""
    records = (FeatureRecord(image_id, 640, 480, np.array([[0, 0, 10, 10]], np.float32), np.ones((1, 4), np.float32))
               for image_id in range(1, IMAGES + 1))
    write_feature_store(records, root / "features")
    write_json(root / "dictionary.json", {"tokens": [f"word{i}" for i in range(TOKENS)]})
    write_json(root / "answers.json", [f"answer{i}" for i in range(ANSWERS)])
    manifest = {"padding_index": TOKENS, "feature_dim": 4}
    arrays = {"question_id": generator.permutation(QUESTIONS * 10)[:QUESTIONS].astype(np.int64),
              "image_id": generator.integers(1, IMAGES + 1, QUESTIONS),
              "tokens": generator.integers(0, TOKENS + 1, (QUESTIONS, LENGTH))}
    return FeatureStore.open(root / "features"), manifest, arrays


def timed(check: Callable[[], object], repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        check()
        seconds.append(time.perf_counter() - began)
    return {"median_ms": 1000 * statistics.median(seconds), "min_ms": 1000 * min(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        store, manifest, arrays = build(root, np.random.default_rng(0))
        split = root / "train.npz"
        checks = {
            "duplicate question ids (one sort)": lambda: repeated_positions(arrays["question_id"]),
            "every image in the store (np.isin)": lambda: store.check_images(arrays["image_id"], path=split,
                                                                            record=str),
            "manifest against dictionary.json and the store": lambda: check_manifest_sizes(root, manifest, store),
            "answers.json read, repeats checked": lambda: read_answers(root),
            "token ids in range": lambda: check_token_ids(arrays["tokens"], TOKENS, split),
        }
        results = {name: timed(check, args.repeats) for name, check in checks.items()}
    print(f"{describe_machine()}; {QUESTIONS:,} questions, {IMAGES:,} images, {TOKENS:,} tokens, {ANSWERS:,} answers")
    print("| check | median ms | min ms |\n| --- | ---: | ---: |")
    for name, result in results.items():
        print(f"| {name} | {result['median_ms']:.1f} | {result['min_ms']:.1f} |")
    total = sum(result["median_ms"] for result in results.values())
    print(f"| all of them (VQA checked the token range before too) | {total:.1f} | |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "checks": results}, indent=2))


if __name__ == "__main__":
    main()
