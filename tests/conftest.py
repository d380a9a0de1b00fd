"""Shared test helpers: where the reference fixtures live; ban's compiled CPU kernels; a small prepared synthetic VQA
dataset, a tiny run trained on it and a way to poison it with NaN; the benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import settings

from ban import kernels
from ban.data.synthetic import generate
from ban.data.vqa2 import prepare_vqa2

# Property-based tests draw the same cases on every run, so a run's result depends on the code alone (CI cannot
# fail by chance); `pytest --hypothesis-profile=explore` draws new ones, as a deliberate search.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

# the authors' code's test vectors, shipped with the tests (tests/fixtures/official/README.md)
OFFICIAL_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` (benchmarks/ is not a package) loaded as a module from its path."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    return OFFICIAL_FIXTURES


@pytest.fixture(scope="session")
def kernel():
    """ban's compiled CPU kernel module (built on first use). Skipped only on a machine without a C++ compiler:
    where one is, a failed build fails the tests that need it (the library would fall back silently)."""
    built = kernels.compiled()
    if built is None:
        compiler = (os.environ.get("CXX") or "c++").split()[0]
        if shutil.which(compiler) is None:
            pytest.skip(f"no C++ compiler ({compiler}) to build ban's CPU kernels with")
        pytest.fail(f"ban's CPU kernels did not build although {compiler} is here (see the RuntimeWarning)")
    return built


def make_dataset(root: Path, seed: int, min_answer_count: int = 9, feature_dim: int = 16) -> Path:
    """A prepared VQA dataset of 56 synthetic images with ``feature_dim``-d features under ``root / "prepared"``."""
    generate(root / "raw", seed=seed, num_images=56, feature_dim=feature_dim, flickr_images=0, write_images=False,
             workers=1, progress=False)
    prepare_vqa2(root / "raw" / "vqa", sorted((root / "raw" / "features").glob("*.tsv")), root / "prepared",
                 min_answer_count=min_answer_count, progress=False)
    return root / "prepared"


TINY_RUN = ["--preset", "tiny", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", "batch_size=64",
            "--set", "precision=fp32"]


def tiny_run(root: Path, seed: int) -> Path:
    """``root / "run"``: the tiny model (fp32) trained one epoch by `ban train` on :func:`make_dataset` (``root``,
    ``seed``), whose prepared data is ``root / "prepared"``."""
    from ban.cli import main

    data_dir = make_dataset(root, seed=seed)
    assert main(["train", "--data", str(data_dir), "--out", str(root / "run"), "--epochs", "1", *TINY_RUN]) == 0
    return root / "run"


def poison(data_dir: Path, question: int, split: str = "train") -> int:
    """Overwrite the region features of the image of sample ``question`` of ``split`` (a question, or a caption of
    a grounding dataset) with NaN; return the image id."""
    image_id = int(np.load(data_dir / f"{split}.npz")["image_id"][question])
    store = data_dir / "features"
    image_ids, offsets = np.load(store / "image_ids.npy"), np.load(store / "offsets.npy")
    position = int(np.flatnonzero(image_ids == image_id)[0])
    features = np.load(store / "features.npy", mmap_mode="r+")
    features[offsets[position]:offsets[position + 1]] = np.nan
    features.flush()
    return image_id
