"""The dataset `ban train` uses when given none: the synthetic scenes, generated and prepared once, cached.

Layout: ``<cache>/synthetic-seed<S>-images<N>-dim<D>/raw`` (the official-format VQA files of ``ban synth``, with
stats.json and its question-only baseline) and ``…/prepared`` (``ban prepare vqa2`` of them).

Cache location: ``$BAN_CACHE`` or ``~/.cache/ban``; each (seed, images, feature width) gets its own directory,
complete only once its marker file exists (stats.json, manifest.json), so an interrupted run is redone; a lock file
beside it lets one process at a time build it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ban.data.prepared import MANIFEST
from ban.filelock import held

SEED = 0
NUM_IMAGES = 5600  # 4,000 train / 1,000 val / 600 test-dev images: about 21.6k / 5.4k / 3.2k questions
FEATURE_DIM = 256  # narrower than the real 2,048 so that a laptop CPU trains in minutes


def cache_dir() -> Path:
    """Where `ban` keeps generated data: ``$BAN_CACHE`` or ``~/.cache/ban``."""
    return Path(os.environ.get("BAN_CACHE") or Path.home() / ".cache" / "ban")


def synthetic_dataset(seed: int = SEED, num_images: int = NUM_IMAGES, feature_dim: int = FEATURE_DIM,
                      root: Path | None = None) -> Path:
    """The prepared synthetic VQA dataset (generating and preparing it on first use); returns its directory."""
    from ban.data.synthetic import generate
    from ban.data.vqa2 import prepare_vqa2

    home = (root or cache_dir()) / f"synthetic-seed{seed}-images{num_images}-dim{feature_dim}"
    prepared = home / "prepared"
    if (prepared / MANIFEST).is_file():
        return prepared
    home.mkdir(parents=True, exist_ok=True)
    # one process builds it (the ranks of `torchrun` all start here); the others wait, then find it complete
    with held(home.parent / f"{home.name}.lock", f"ban: waiting for another process preparing {home}"):
        if (prepared / MANIFEST).is_file():
            return prepared
        raw = home / "raw"
        if not (raw / "stats.json").is_file():  # stats.json is written last: its presence marks a complete set
            # no Flickr30k part: nothing of the demo reads it (each image has its own random streams, so the VQA
            # part is the same as `ban synth --images N --feature-dim D`'s)
            generate(raw, seed=seed, num_images=num_images, feature_dim=feature_dim, flickr_images=0)
        prepare_vqa2(raw / "vqa", sorted((raw / "features").glob("*.tsv")), prepared)  # manifest.json comes last
    return prepared
