"""Synthetic scenes for BAN, written in the official VQA 2.0, bottom-up-feature and Flickr30k Entities formats.

`generate(out_dir, seed, num_images, feature_dim)` writes a directory that the real-data code paths read as
they read the real datasets (layout in docs/synthetic.md). Same arguments → byte-identical files, whatever
the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from tqdm import tqdm

from ban.data.atomic import atomic_open, make_directory, write_file
from ban.data.synthetic import export_flickr, export_vqa
from ban.data.synthetic.baselines import blind_baselines
from ban.data.synthetic.detections import BOX_COUNTS, UNIFORM_COUNTS
from ban.data.synthetic.layout import (
    FLICKR_DIR,
    FLICKR_FEATURES,
    FLICKR_SPLITS,
    OUTPUT_ENTRIES,
    STATS_FILE,
    VQA_SPLITS,
    ImageJob,
    VqaSplit,
    default_flickr_images,
    plan_images,
)
from ban.data.synthetic.stats import SplitCounter, answer_balance
from ban.data.synthetic.worker import ImageResult, Settings, make_chunk
from ban.errors import ConfigError

DEFAULT_IMAGES = 2800  # 2,000 train / 500 val / 300 test-dev
DEFAULT_FEATURE_DIM = 2048
QUESTIONS_PER_IMAGE = 5.36  # VQA 2.0 train: 443,757 questions over 82,783 images
ANNOTATOR_ACCURACY = 0.88
CHUNK_SIZE = 32

__all__ = ["generate", "DEFAULT_IMAGES", "DEFAULT_FEATURE_DIM", "QUESTIONS_PER_IMAGE", "ANNOTATOR_ACCURACY"]


def default_workers(num_images: int) -> int:
    """Processes to use: one for small sets, else every available core (at most 8)."""
    if num_images < 400:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@contextmanager
def _mapper(settings: Settings, workers: int) -> Iterator[Callable[[Iterable[list[ImageJob]]], Iterator]]:
    """A function mapping chunks of jobs to their results, in order, in `workers` processes."""
    work = partial(make_chunk, settings)
    if workers <= 1:
        yield lambda chunks: map(work, chunks)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield lambda chunks: pool.imap(work, chunks)


def _chunks(jobs: list[ImageJob]) -> list[list[ImageJob]]:
    return [jobs[i : i + CHUNK_SIZE] for i in range(0, len(jobs), CHUNK_SIZE)]


def _check(feature_dim: int, questions_per_image: float, annotator_accuracy: float, seed: int, box_counts: str) -> None:
    """The settings :func:`generate` checks itself (the image count: :func:`~ban.data.synthetic.layout.plan_images`)."""
    if feature_dim < 1:
        raise ConfigError(f"--feature-dim must be positive, got {feature_dim}")
    if not 1.0 <= questions_per_image <= 20.0:
        raise ConfigError(f"--questions-per-image must be in [1, 20], got {questions_per_image}")
    if not 0.5 <= annotator_accuracy <= 1.0:
        raise ConfigError(f"--annotator-accuracy must be in [0.5, 1], got {annotator_accuracy}")
    if seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {seed}")
    if box_counts not in BOX_COUNTS:
        raise ConfigError(f"--boxes must be one of {', '.join(BOX_COUNTS)}, got {box_counts!r}")


def generate(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_images: int = DEFAULT_IMAGES,
    feature_dim: int = DEFAULT_FEATURE_DIM,
    *,
    flickr_images: int | None = None,
    questions_per_image: float = QUESTIONS_PER_IMAGE,
    annotator_accuracy: float = ANNOTATOR_ACCURACY,
    write_images: bool = True,
    box_counts: str = UNIFORM_COUNTS,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write a synthetic dataset into `out_dir` and return its statistics (also written to stats.json).

    `num_images` VQA images are split 5 : 1.25 : 0.75 into train / val / test-dev; `flickr_images` (default
    max(10, 0.384 × num_images), Flickr30k's size relative to VQA 2.0) are split 80 / 10 / 10 %. `box_counts`: 10–36
    detector boxes per image, or bottom-up's 10–100 (:func:`~ban.data.synthetic.detections.sample_detections`).
    What an earlier run wrote in ``out_dir`` (:data:`OUTPUT_ENTRIES`) is removed first — stats.json first of all,
    and it is written last, so its presence marks a complete directory — and nothing of another seed or size stays
    behind.
    """
    _check(feature_dim, questions_per_image, annotator_accuracy, seed, box_counts)
    flickr_images = default_flickr_images(num_images) if flickr_images is None else flickr_images
    plan = plan_images(num_images, flickr_images)
    out = make_directory(out_dir)
    for name in OUTPUT_ENTRIES[::-1]:  # stats.json first
        entry = out / name
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
    settings = Settings(str(out), seed, feature_dim, questions_per_image, annotator_accuracy, write_images, box_counts)
    workers = default_workers(num_images + flickr_images) if workers is None else workers
    counters: dict[tuple[str, str], SplitCounter] = {key: SplitCounter() for key in plan}
    bar = tqdm(total=num_images + flickr_images, desc="ban synth", unit="img", disable=not progress)
    with bar, _mapper(settings, workers) as run:
        for split in VQA_SPLITS:
            _write_vqa_split(
                out, seed, split, run(_chunks(plan[("vqa", split.name)])), counters[("vqa", split.name)], bar
            )
        flickr_jobs = [job for name, _ in FLICKR_SPLITS for job in plan[("flickr", name)]]
        if flickr_jobs:
            chunks = _chunks(flickr_jobs)
            with atomic_open(out / FLICKR_FEATURES) as tsv:
                for chunk, results in zip(chunks, run(chunks), strict=True):
                    for job, result in zip(chunk, results, strict=True):
                        tsv.write(result.tsv_line)
                        counters[("flickr", job.split)].add(result)
                    bar.update(len(results))
            for name, _ in FLICKR_SPLITS:
                ids = [job.image_id for job in plan[("flickr", name)]]
                write_file(out / FLICKR_DIR / f"{name}.txt", export_flickr.split_list(ids))
    stats = _statistics(settings, num_images, flickr_images, counters)
    write_file(out / STATS_FILE, json.dumps(stats, indent=2, sort_keys=False) + "\n")
    return stats


def _write_vqa_split(
    out: Path, seed: int, split: VqaSplit, results: Iterator[list[ImageResult]], counter: SplitCounter, bar: tqdm
) -> None:
    """Stream one VQA split's features, questions and annotations into their files."""
    with ExitStack() as stack:
        tsv = stack.enter_context(atomic_open(out / split.features_file))
        questions = stack.enter_context(
            export_vqa.RecordsFileWriter(
                out / split.questions_file, export_vqa.questions_header(seed, split.data_subtype), "questions"
            )
        )
        annotations = None
        if split.annotations_file is not None:
            annotations = stack.enter_context(
                export_vqa.RecordsFileWriter(
                    out / split.annotations_file, export_vqa.annotations_header(seed, split.data_subtype), "annotations"
                )
            )
        for chunk in results:
            for result in chunk:
                tsv.write(result.tsv_line)
                for record in result.question_records:
                    questions.add(record)
                if annotations is not None:
                    for record in result.annotation_records:
                        annotations.add(record)
                counter.add(result)
            bar.update(len(chunk))


def _statistics(
    settings: Settings, num_images: int, flickr_images: int, counters: dict[tuple[str, str], SplitCounter]
) -> dict:
    train, val = counters[("vqa", "train")].qa, counters[("vqa", "val")].qa
    return {
        "seed": settings.seed,
        "feature_dim": settings.feature_dim,
        "box_counts": settings.box_counts,
        "num_images": num_images,
        "flickr_images": flickr_images,
        "questions_per_image": settings.questions_per_image,
        "annotator_accuracy": settings.annotator_accuracy,
        "vqa": {split: counters[("vqa", split)].summary() for split in (s.name for s in VQA_SPLITS)},
        "flickr30k": {name: counters[("flickr", name)].summary() for name, _ in FLICKR_SPLITS},
        "answer_balance": answer_balance(train + val),
        "baselines": blind_baselines(train, val),
    }
