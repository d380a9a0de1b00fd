"""Pictures of a trained run for its report and for `ban visualize`: which questions / captions, which image
folder, and the loop that writes them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ban.data.prepared import prepared_from
from ban.engine.reporting import REPORT_DIR
from ban.engine.run import RunConfig
from ban.errors import DataError
from ban.viz.vqa import VQAPictures, choose_indices

if TYPE_CHECKING:
    from ban.viz.grounding import GroundingPictures

REPORT_PICTURES = 4


def default_image_dir(data_dir: Path, task: str) -> Path | None:
    """The first existing image folder near the prepared dataset: ``DATA/images``, ``DATA/../images``, the
    folders the synthetic scenes write (``DATA/../raw/images`` for VQA, ``DATA/../raw/flickr30k/images`` for
    grounding), then beside the raw files it was prepared from (the manifest's ``root``: ``ROOT/images``, and for
    VQA ``ROOT/../images``, where `ban synth` writes them); None if there is none."""
    parent = data_dir.parent
    candidates = [data_dir / "images", parent / "images"]
    if task == "grounding":
        candidates += [parent / "raw" / "flickr30k" / "images", parent / "flickr30k" / "images"]
    else:
        candidates += [parent / "raw" / "images"]
    root = prepared_from(data_dir)
    if root is not None:
        candidates += [root / "images"] if task == "grounding" else [root / "images", root.parent / "images"]
    return next((path for path in candidates if path.is_dir()), None)


def picture_maker(model: nn.Module, run: RunConfig, data_dir: Path, split: str, image_dir: Path | None,
                  device: torch.device | None = None) -> VQAPictures | GroundingPictures:
    """The picture writer of the run's task on ``split``."""
    if run.task == "grounding":  # imported here: a VQA run needs nothing of grounding's readers (their XML parser)
        from ban.viz.grounding import GroundingPictures

        return GroundingPictures(model, data_dir, split, image_dir, device)
    return VQAPictures(model, data_dir, split, image_dir, device)


def pick(maker: VQAPictures | GroundingPictures, wanted: Sequence[int] | None, num: int, shuffle: bool,
         seed: int) -> list[int]:
    """Positions to draw: VQA ``wanted`` are question ids, grounding ``wanted`` are caption positions."""
    if isinstance(maker, VQAPictures):
        return choose_indices(maker.dataset.question_ids, wanted, num, shuffle, seed,
                              maker.data_dir / f"{maker.split}.npz")
    if wanted:
        return list(wanted)
    return choose_indices(np.arange(len(maker)), None, num, shuffle, seed, maker.dataset.data_dir)


def write_report_pictures(run_dir: str | Path, model: nn.Module, run: RunConfig, split: str | None = None,
                          num: int = REPORT_PICTURES, device: torch.device | None = None) -> list[Path]:
    """Write ``num`` attention (VQA) or grounding pictures of ``split`` (default: the run's val split) into
    ``RUN_DIR/report/``, for questions drawn with seed 0; the image folder is found next to the dataset
    (blank canvases otherwise). Meant for the end of training, which an unreadable image file must not fail: its
    picture is skipped with a line on stderr. Returns the paths written (none if there is no split)."""
    data_dir = Path(run.data_dir)
    split = split or run.train.val_split
    if not split or not (data_dir / f"{split}.npz").is_file():
        return []
    if device is None:
        device = next(model.parameters()).device
    maker = picture_maker(model, run, data_dir, split, default_image_dir(data_dir, run.task), device)
    out = Path(run_dir) / REPORT_DIR
    written = []
    for index in pick(maker, None, num, True, 0):
        try:
            written.append(maker.write(index, out, prefix=f"{split}-")[0])
        except DataError as error:
            print(f"attention picture skipped: {error}", file=sys.stderr)
    return written
