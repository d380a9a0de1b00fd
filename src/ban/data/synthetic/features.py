"""Region features: a fixed random projection of each box's content code, plus noise, through a ReLU.

The content code of a box holds one-hot attributes of the object it shows (weaker for a partial box), a
background flag, a partial flag and a coarse, smooth encoding of the box centre's position (so left/right
relations can be read from the features alone). The projection matrix depends only on a fixed constant and
the feature width — never on the data seed — so every generated set shares one "visual world". Each output
dimension mixes every code entry: no single dimension spells an answer.
"""

from __future__ import annotations

import numpy as np

from ban.data.synthetic.detections import BACKGROUND, PARTIAL, Detections
from ban.data.synthetic.scenes import NUM_VALUES, Scene

PROJECTION_SEED = 20180523  # fixed: independent of the data seed
X_BINS, Y_BINS = 6, 4
POSITION_WIDTH = 0.6  # width of the smooth position bumps, in bins
PARTIAL_STRENGTH = 0.6
NOISE = 1.0
ATTRIBUTE_OFFSETS = np.cumsum((0,) + NUM_VALUES)[:-1]
ATTRIBUTE_CODES = int(sum(NUM_VALUES))
BACKGROUND_CODE = ATTRIBUTE_CODES
PARTIAL_CODE = ATTRIBUTE_CODES + 1
POSITION_CODE = ATTRIBUTE_CODES + 2
CODE_DIM = POSITION_CODE + X_BINS + Y_BINS


def projection_matrix(feature_dim: int) -> np.ndarray:
    """The fixed `[CODE_DIM, feature_dim]` float32 projection (standard normal entries)."""
    rng = np.random.Generator(np.random.PCG64(PROJECTION_SEED))
    return rng.standard_normal((CODE_DIM, feature_dim), dtype=np.float32)


def _bumps(position: np.ndarray, bins: int) -> np.ndarray:
    """Smooth one-hot of `[N]` positions in [0, 1] over `bins` bins → `[N, bins]`."""
    centers = (np.arange(bins) + 0.5) / bins
    distance = (position[:, None] - centers[None, :]) * bins
    return np.exp(-0.5 * (distance / POSITION_WIDTH) ** 2)


def content_codes(scene: Scene, detections: Detections) -> np.ndarray:
    """`[N, CODE_DIM]` float32 content code of each detection box."""
    count = len(detections.boxes)
    codes = np.zeros((count, CODE_DIM), dtype=np.float32)
    on_object = detections.source >= 0
    rows = np.flatnonzero(on_object)
    strength = np.where(detections.kind[rows] == PARTIAL, PARTIAL_STRENGTH, 1.0)
    attributes = scene.attributes[detections.source[rows]]
    for column, offset in enumerate(ATTRIBUTE_OFFSETS):
        codes[rows, offset + attributes[:, column]] = strength
    codes[detections.kind == BACKGROUND, BACKGROUND_CODE] = 1.0
    codes[detections.kind == PARTIAL, PARTIAL_CODE] = 1.0
    center = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2.0
    codes[:, POSITION_CODE : POSITION_CODE + X_BINS] = _bumps(center[:, 0] / scene.width, X_BINS)
    codes[:, POSITION_CODE + X_BINS :] = _bumps(center[:, 1] / scene.height, Y_BINS)
    return codes


def region_features(
    rng: np.random.Generator, scene: Scene, detections: Detections, projection: np.ndarray
) -> np.ndarray:
    """`[N, D]` float32 features: ReLU(code @ projection + NOISE · standard normal), D = projection width.

    A row is never all zero (that would read as a padded box): a row that the ReLU zeroed gets a tiny
    positive first entry.
    """
    codes = content_codes(scene, detections)
    noise = rng.standard_normal((codes.shape[0], projection.shape[1]), dtype=np.float32)
    # einsum (no BLAS): a multi-threaded BLAS call on these small matrices is up to 50x slower on 2 cores.
    features = np.einsum("nc,cd->nd", codes, projection)
    features += np.float32(NOISE) * noise
    np.maximum(features, 0.0, out=features)
    empty = ~features.any(axis=1)
    features[empty, 0] = np.float32(1e-3)
    return features
