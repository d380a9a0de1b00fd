"""Rows of the bottom-up-attention feature TSV (Anderson et al. 2018), as its `csv.DictWriter` wrote them.

Fields, tab-separated, no header: image_id, image_w, image_h, num_boxes, boxes, features; `boxes` is base64 of
float32 `[num_boxes, 4]` (x1, y1, x2, y2 in pixels) and `features` base64 of float32 `[num_boxes, D]`. Rows
end with CR LF, the csv module's default line terminator.
"""

from __future__ import annotations

import base64

import numpy as np

LINE_END = "\r\n"


def tsv_row(image_id: int, width: int, height: int, boxes: np.ndarray, features: np.ndarray) -> str:
    """One TSV line for an image with `[N, 4]` boxes and `[N, D]` features (both cast to float32)."""
    if boxes.shape[0] != features.shape[0] or boxes.shape[1:] != (4,):
        raise ValueError(f"boxes {boxes.shape} and features {features.shape} disagree")
    fields = (
        str(image_id),
        str(width),
        str(height),
        str(boxes.shape[0]),
        base64.b64encode(np.ascontiguousarray(boxes, dtype=np.float32).tobytes()).decode("ascii"),
        base64.b64encode(np.ascontiguousarray(features, dtype=np.float32).tobytes()).decode("ascii"),
    )
    return "\t".join(fields) + LINE_END
