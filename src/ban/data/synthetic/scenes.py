"""Synthetic scenes: objects with attributes (colour, shape, size, material) at positions in an image.

A scene is sampled from one image's random generator; objects sit in distinct cells of a coarse grid (with
jitter), so they never overlap much and left/right relations between objects in different columns are clear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "ring")
SHAPE_PLURALS: tuple[str, ...] = ("cubes", "spheres", "cylinders", "cones", "rings")
SIZES: tuple[str, ...] = ("small", "medium", "large")
MATERIALS: tuple[str, ...] = ("metal", "rubber", "glass")

# Attribute columns of `Scene.attributes`, in the order words are written ("large red metal cube").
SIZE, COLOR, MATERIAL, SHAPE = 0, 1, 2, 3
ATTRIBUTE_NAMES: tuple[str, ...] = ("size", "color", "material", "shape")
ATTRIBUTE_VALUES: tuple[tuple[str, ...], ...] = (SIZES, COLORS, MATERIALS, SHAPES)
NUM_VALUES: tuple[int, ...] = tuple(len(values) for values in ATTRIBUTE_VALUES)

# Image sizes (width, height) in pixels; several, so readers must use each image's own size.
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((320, 240), (240, 320), (320, 320), (400, 300))
GRID_COLUMNS, GRID_ROWS = 5, 4
MIN_OBJECTS, MAX_OBJECTS = 3, 12

# Half-extent of each shape's box relative to its radius (x, y).
SHAPE_EXTENT: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.0, 1.0), (0.75, 1.0), (0.85, 1.0), (1.0, 1.0))
RADIUS_FRACTION: tuple[float, ...] = (0.22, 0.32, 0.42)  # small, medium, large: × the smaller cell side


@dataclass(frozen=True)
class Scene:
    """One synthetic image's content.

    Attributes:
        width, height: image size in pixels.
        attributes: `[n, 4]` int64, columns (size, color, material, shape) as indices into the value tuples;
            no two objects share all four values.
        boxes: `[n, 4]` float64 tight object boxes x1, y1, x2, y2 in pixels.
    """

    width: int
    height: int
    attributes: np.ndarray
    boxes: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.attributes.shape[0])

    @property
    def centers(self) -> np.ndarray:
        """`[n, 2]` box centres (x, y) in pixels."""
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2.0


def sample_attributes(rng: np.random.Generator, count: int) -> np.ndarray:
    """`[count, 4]` attribute rows, uniform per attribute, all four-value combinations distinct."""
    radix = np.array(NUM_VALUES)
    total = int(np.prod(radix))
    codes = rng.choice(total, size=count, replace=False)
    rows = np.empty((count, len(radix)), dtype=np.int64)
    for column in range(len(radix) - 1, -1, -1):
        rows[:, column] = codes % radix[column]
        codes = codes // radix[column]
    return rows


def sample_scene(rng: np.random.Generator) -> Scene:
    """Sample a scene: image size, 3–12 objects with distinct attribute combinations, positions on a grid."""
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    attributes = sample_attributes(rng, count)
    cells = rng.choice(GRID_COLUMNS * GRID_ROWS, size=count, replace=False)
    cell_w, cell_h = width / GRID_COLUMNS, height / GRID_ROWS
    jitter = rng.uniform(-0.2, 0.2, size=(count, 2))
    center_x = (cells % GRID_COLUMNS + 0.5 + jitter[:, 0]) * cell_w
    center_y = (cells // GRID_COLUMNS + 0.5 + jitter[:, 1]) * cell_h
    radius = np.asarray(RADIUS_FRACTION)[attributes[:, SIZE]] * min(cell_w, cell_h)
    radius = radius * rng.uniform(0.9, 1.1, size=count)
    extent = np.asarray(SHAPE_EXTENT)[attributes[:, SHAPE]] * radius[:, None]
    boxes = np.stack(
        [center_x - extent[:, 0], center_y - extent[:, 1], center_x + extent[:, 0], center_y + extent[:, 1]],
        axis=1,
    )
    boxes = np.clip(boxes, 0.0, [width - 1, height - 1, width - 1, height - 1])
    return Scene(width=width, height=height, attributes=attributes, boxes=boxes)
