"""File names and the split plan of a generated directory (the official names of each dataset)."""

from __future__ import annotations

from dataclasses import dataclass

from ban.errors import ConfigError


@dataclass(frozen=True)
class VqaSplit:
    """One VQA-2.0-like split: its files and the COCO subset its images are named after."""

    name: str
    questions_file: str
    annotations_file: str | None
    features_file: str
    data_subtype: str
    image_subset: str
    fraction: float

    def image_file(self, image_id: int) -> str:
        return f"images/COCO_{self.image_subset}_{image_id:012d}.png"


VQA_SPLITS: tuple[VqaSplit, ...] = (
    VqaSplit("train", "vqa/v2_OpenEnded_mscoco_train2014_questions.json", "vqa/v2_mscoco_train2014_annotations.json",
             "features/train2014.tsv", "train2014", "train2014", 5 / 7),
    VqaSplit("val", "vqa/v2_OpenEnded_mscoco_val2014_questions.json", "vqa/v2_mscoco_val2014_annotations.json",
             "features/val2014.tsv", "val2014", "val2014", 5 / 28),
    VqaSplit("test-dev", "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json", None,
             "features/test2015.tsv", "test-dev2015", "test2015", 3 / 28),
)  # fmt: skip
FLICKR_DIR = "flickr30k"
FLICKR_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
FLICKR_FEATURES = f"{FLICKR_DIR}/features.tsv"
FLICKR_ID_BASE = 1_000_000_000  # Flickr-like ids, disjoint from the COCO-like ones
FLICKR_PER_VQA_IMAGE = 0.384  # Flickr30k has 31,783 images where VQA 2.0 train has 82,783
STATS_FILE = "stats.json"
OUTPUT_ENTRIES = ("images", "vqa", "features", FLICKR_DIR, STATS_FILE)  # what a run writes at the top of --out
MIN_IMAGES = 10


@dataclass(frozen=True)
class ImageJob:
    """One image to generate: its global index (seeds its random streams), id, dataset and split."""

    index: int
    image_id: int
    dataset: str  # "vqa" or "flickr"
    split: str


def _split_counts(total: int, fractions: list[float]) -> list[int]:
    counts = [round(total * f) for f in fractions[:-1]]
    return counts + [total - sum(counts)]


def default_flickr_images(num_images: int) -> int:
    """Flickr images to pair with `num_images` VQA images (Flickr30k's size relative to VQA 2.0 train)."""
    return max(MIN_IMAGES, round(num_images * FLICKR_PER_VQA_IMAGE))


def plan_images(num_images: int, flickr_images: int) -> dict[tuple[str, str], list[ImageJob]]:
    """(dataset, split) → its images. Global indices run over VQA train, val, test-dev, then Flickr."""
    if num_images < MIN_IMAGES:
        raise ConfigError(f"--images must be at least {MIN_IMAGES} (every split needs an image), got {num_images}")
    if flickr_images != 0 and flickr_images < MIN_IMAGES:
        raise ConfigError(f"--flickr-images must be 0 or at least {MIN_IMAGES}, got {flickr_images}")
    plan: dict[tuple[str, str], list[ImageJob]] = {}
    index = 0
    vqa_counts = _split_counts(num_images, [s.fraction for s in VQA_SPLITS])
    for split, count in zip(VQA_SPLITS, vqa_counts, strict=True):
        plan[("vqa", split.name)] = [ImageJob(i, i + 1, "vqa", split.name) for i in range(index, index + count)]
        index += count
    flickr_counts = _split_counts(flickr_images, [f for _, f in FLICKR_SPLITS]) if flickr_images else [0, 0, 0]
    for (name, _), count in zip(FLICKR_SPLITS, flickr_counts, strict=True):
        plan[("flickr", name)] = [ImageJob(i, FLICKR_ID_BASE + i, "flickr", name) for i in range(index, index + count)]
        index += count
    return plan
