"""Drawing boxes on an image with Pillow: outlines and fills whose opacity says how much attention a box got.

Boxes are normalised x1, y1, x2, y2 in [0, 1] (the model's input ``boxes[..., :4]``); they are scaled to the
image's pixel size here, so the same boxes fit the real image or a blank canvas of the same size.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ban.errors import DataError

if TYPE_CHECKING:
    from ban.data.features import FeatureStore

BLANK = (238, 238, 238)
COCO_PATTERNS = ("COCO_{subset}_{id:012d}.jpg", "COCO_{subset}_{id:012d}.png", "{subset}/COCO_{subset}_{id:012d}.jpg",
                 "{subset}/COCO_{subset}_{id:012d}.png")


def find_coco_image(image_dir: Path, subset: str, image_id: int) -> Path | None:
    """The file of ``image_id`` in ``image_dir`` under the COCO naming convention
    (``COCO_<subset>_<12-digit id>.jpg|png``, also inside a ``<subset>/`` folder), or any subset's file of that
    id (``COCO_*_<id>.*``); None when there is none."""
    for pattern in COCO_PATTERNS:
        path = image_dir / pattern.format(subset=subset, id=image_id)
        if path.is_file():
            return path
    matches = sorted(image_dir.glob(f"COCO_*_{image_id:012d}.*"))
    return matches[0] if matches else None


def find_plain_image(image_dir: Path, image_id: int) -> Path | None:
    """``<image_dir>/<id>.jpg|png`` (the Flickr30k naming), or None."""
    for suffix in (".jpg", ".png"):
        path = image_dir / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


def open_or_blank(path: Path | None, size: tuple[int, int],
                  expected: tuple[int, int] | None = None) -> tuple[Image.Image, bool]:
    """(RGB image, True) from ``path`` by :func:`read_image`; (blank canvas of ``size`` = (width, height), False)
    when path is None or its file is not the image of ``expected`` size."""
    image = None if path is None else read_image(path, expected)
    return (Image.new("RGB", size, BLANK), False) if image is None else (image, True)


def read_image(path: Path, expected: tuple[int, int] | None) -> Image.Image | None:
    """The RGB image in ``path``, or None when it is not the image the features were detected on: its pixel size
    (read from the file's header, before any pixel is decoded) is not ``expected`` = (width, height), which a line
    on stderr says (``expected`` None: not recorded, not checked). A file Pillow cannot read (not an image,
    truncated, too large) is a :class:`DataError` naming it."""
    try:
        with Image.open(path) as image:
            if expected is not None and image.size != tuple(expected):
                print(f"{path}: the image is {image.width}×{image.height} pixels but its features were detected on "
                      f"a {expected[0]}×{expected[1]} image: not that image; boxes drawn on a blank canvas",
                      file=sys.stderr)
                return None
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError, ValueError, TypeError, SyntaxError, EOFError,
            struct.error) as error:  # what Pillow's decoders raise for damaged files of their formats
        reason = "not an image file Pillow can read" if isinstance(error, UnidentifiedImageError) else str(error)
        raise DataError(f"cannot read the image ({reason}); replace or remove the file", path=path) from None


def stored_image(store: FeatureStore, image_id: int, spatial: np.ndarray,
                 path: Path | None) -> tuple[Image.Image, bool]:
    """What ``image_id``'s boxes are drawn on (:func:`open_or_blank`): the image file at ``path`` when it is the
    one the features in ``store`` were detected on, else a blank canvas of the image's size — the store's record,
    or where the source keeps none (the authors' HDF5 cache) the size recovered from its pixel boxes and their
    normalised coordinates ``spatial`` ``[n, ≥6]`` (:func:`image_size_from_boxes`)."""
    recorded = store.image_size(image_id)
    size = recorded if recorded is not None else image_size_from_boxes(store.boxes(image_id), spatial)
    return open_or_blank(path, size, recorded)


def image_size_from_boxes(pixel_boxes: np.ndarray, spatial: np.ndarray) -> tuple[int, int]:
    """(width, height) of an image recovered from its pixel boxes ``[n, 4]`` and normalised spatial features
    ``[n, ≥6]`` (bw/w and bh/h in columns 4–5): width = bw / (bw/w), taken over boxes with a positive width."""
    sizes = []
    for axis in (0, 1):
        extent = pixel_boxes[:, axis + 2] - pixel_boxes[:, axis]
        ratio = spatial[:, axis + 4]
        usable = ratio > 1e-6
        if not usable.any():
            sizes.append(int(round(float(pixel_boxes[:, axis + 2].max(initial=1.0)))))
        else:
            sizes.append(int(round(float(np.median(extent[usable] / ratio[usable])))))
    return max(sizes[0], 1), max(sizes[1], 1)


def to_pixels(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised boxes ``[n, 4]`` → pixel boxes ``[n, 4]`` for an image of ``size`` = (width, height), corners
    ordered (x1 ≤ x2, y1 ≤ y2) so that a malformed box still draws."""
    width, height = size
    pixels = np.asarray(boxes, dtype=np.float64)[:, :4] * np.array([width, height, width, height])
    return np.concatenate([np.minimum(pixels[:, :2], pixels[:, 2:]), np.maximum(pixels[:, :2], pixels[:, 2:])], 1)


def label_font(image_width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at a size that stays readable when the image is shown about 300 pixels wide."""
    return ImageFont.load_default(size=max(10, round(image_width / 22)))


def box_opacities(weights: np.ndarray, min_alpha: float = 0.08) -> np.ndarray:
    """``[n]`` opacities in [min_alpha, 1] of boxes with attention weights ``[n]`` ≥ 0.

    A box's strength is its weight above the even share ``mean`` (1/n for weights that sum to 1), relative to
    the top box's excess over it, ``(w - mean) / (max - mean)``, or to the even share itself while the top box
    has less than twice it: ``max(w - mean, 0) / max(max - mean, mean)``. So attention that singles boxes out
    draws its top box fully opaque, and near-uniform attention (every box about the even share) draws every box
    faint instead of covering the scene; boxes at or below the even share get ``min_alpha``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    even = weights.mean() if weights.size else 0.0
    if even <= 0:
        return np.full(weights.shape, min_alpha)
    strength = np.clip(weights - even, 0.0, None) / max(weights.max() - even, even)
    return min_alpha + (1.0 - min_alpha) * strength


def draw_weighted_boxes(image: Image.Image, boxes: np.ndarray, weights: np.ndarray,
                        color: tuple[int, int, int] = (230, 30, 30), labels: Sequence[str] | None = None,
                        min_alpha: float = 0.08, label_min_alpha: float = 0.6) -> Image.Image:
    """A copy of ``image`` with each box drawn at the opacity :func:`box_opacities` gives its weight.

    boxes ``[n, 4]`` normalised x1, y1, x2, y2; weights ``[n]`` ≥ 0; a fully opaque box has an opaque outline
    and a half-transparent fill. Boxes are drawn from the least to the most attended, so the strongest is on
    top; ``labels[i]`` (e.g. the box index) is written at each box's corner after every box, at the box's
    opacity but at least ``label_min_alpha``, so that a box barely attended overall can still be found by its
    number (a heatmap column that one word lights up).
    """
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = label_font(base.width)
    opacities = box_opacities(weights, min_alpha)
    line = max(1, round(min(base.size) / 150))
    order = np.argsort(opacities, kind="stable")
    corners = to_pixels(boxes, base.size)
    for index in order:
        alpha = float(opacities[index])
        draw.rectangle(tuple(corners[index]), fill=(*color, int(110 * alpha * alpha)),
                       outline=(*color, int(255 * alpha)), width=line)
    for index in order if labels is not None else ():
        alpha = max(float(opacities[index]), label_min_alpha)
        draw.text((corners[index, 0] + 2, corners[index, 1] + 1), labels[index], fill=(255, 255, 255, int(255 * alpha)),
                  font=font, stroke_width=1, stroke_fill=(0, 0, 0, int(255 * alpha)))
    return Image.alpha_composite(base, overlay).convert("RGB")


def draw_colored_boxes(image: Image.Image, boxes: np.ndarray, colors: Sequence[tuple[int, int, int]],
                       labels: Sequence[str] | None = None) -> Image.Image:
    """A copy of ``image`` with box i (normalised ``[n, 4]``) outlined in ``colors[i]`` over a light fill.

    A box listed again (two phrases on the same box) is drawn inset inside the earlier outlines, so every
    colour stays visible, and its label follows the earlier ones along the top edge; the labels are drawn last,
    so no box covers one.
    """
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = label_font(base.width)
    line = max(2, round(min(base.size) / 100))
    drawn: dict[tuple[float, ...], int] = {}
    label_at: dict[tuple[float, ...], tuple[float, float]] = {}  # where the next label on a box goes
    texts = []
    for index, corners in enumerate(to_pixels(boxes, base.size)):
        key = tuple(np.round(corners, 3).tolist())
        repeat = drawn.get(key, 0)
        drawn[key] = repeat + 1
        inset = repeat * (line + 1)
        x1, y1, x2, y2 = corners + np.array([inset, inset, -inset, -inset])
        if x2 <= x1 or y2 <= y1:
            x1, y1, x2, y2 = corners
        color = tuple(colors[index])
        draw.rectangle((x1, y1, x2, y2), fill=(*color, 50), outline=(*color, 255), width=line)
        if labels is not None:
            x, y = label_at.get(key, (x1 + line + 1, y1 + line))
            texts.append(((x, y), labels[index], color))
            label_at[key] = (x + draw.textlength(labels[index], font=font) + 2 * line, y)
    for position, text, color in texts:
        draw.text(position, text, fill=(255, 255, 255, 255), font=font, stroke_width=1, stroke_fill=(*color, 255))
    return Image.alpha_composite(base, overlay).convert("RGB")


def enlarged(image: Image.Image, min_width: int = 480) -> Image.Image:
    """``image`` scaled up (keeping its aspect ratio) to at least ``min_width`` pixels wide, so that box
    outlines and index labels stay readable on small images; larger images are returned as they are."""
    if image.width >= min_width:
        return image
    scale = min_width / image.width
    return image.resize((min_width, max(1, round(image.height * scale))), Image.Resampling.BICUBIC)
