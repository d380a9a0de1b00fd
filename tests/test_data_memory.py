"""Converting a TSV runs in flat memory: the converter's peak RSS does not grow with the file."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest

CHILD = r"""
import json, sys
from pathlib import Path

def kb(field):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))

from ban.data.features import FeatureStore, write_feature_store
from ban.data.features_tsv import iter_tsv_files
baseline = kb("VmRSS:")
summary = write_feature_store(iter_tsv_files([sys.argv[1]], progress=False), sys.argv[2])
print(json.dumps({"baseline_kb": baseline, "peak_kb": kb("VmHWM:"), "images": summary.num_images}))
"""


@pytest.mark.slow
def test_conversion_memory_is_flat(tmp_path) -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((100, 2048)).astype(np.float32)
    path = tmp_path / "big.tsv"
    with open(path, "wb") as file:
        for image_id in range(140):  # 140 × 100 boxes × 2048 floats ≈ 110 MB of float32, ≈ 150 MB of TSV
            boxes = np.tile(np.array([[1, 2, 30, 40]], np.float32), (100, 1))
            file.write(b"\t".join([str(image_id).encode(), b"640", b"480", b"100", base64.b64encode(boxes.tobytes()),
                                   base64.b64encode((features + image_id).tobytes())]) + b"\r\n")
    size_mb = path.stat().st_size / 2**20
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp_path / "store")],
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    working_mb = (measured["peak_kb"] - measured["baseline_kb"]) / 1024
    assert measured["images"] == 140
    assert size_mb > 140
    assert working_mb < 32, f"converting {size_mb:.0f} MB took {working_mb:.0f} MB above the baseline"
