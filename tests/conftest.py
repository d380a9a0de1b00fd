"""Shared test helpers: where the reference fixtures live; ban's compiled CPU kernels; a small prepared synthetic VQA
dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from ban import kernels
from ban.data.synthetic import generate
from ban.data.vqa2 import prepare_vqa2

# CI clones the repo next to a copy of shared/; a developer checkout has it beside the repo too.
OFFICIAL_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    if not OFFICIAL_FIXTURES.is_dir():
        pytest.fail(f"the reference fixtures are missing: expected them at {OFFICIAL_FIXTURES}")
    return OFFICIAL_FIXTURES


@pytest.fixture(scope="session")
def kernel():
    """ban's compiled CPU kernel module (built on first use)."""
    built = kernels.compiled()
    if built is None:
        pytest.skip("ban's CPU kernels could not be built here (see the RuntimeWarning)")
    return built


def make_dataset(root: Path, seed: int, min_answer_count: int = 9) -> Path:
    """A prepared VQA dataset of 56 synthetic images with 16-d features under ``root / "prepared"``."""
    generate(root / "raw", seed=seed, num_images=56, feature_dim=16, flickr_images=0, write_images=False,
             workers=1, progress=False)
    prepare_vqa2(root / "raw" / "vqa", sorted((root / "raw" / "features").glob("*.tsv")), root / "prepared",
                 min_answer_count=min_answer_count, progress=False)
    return root / "prepared"
