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

from ban.data.features import FeatureStore
from ban.data.features_writer import write_feature_store
from ban.data.features_tsv import iter_tsv_files
baseline = kb("VmRSS:")
summary = write_feature_store(iter_tsv_files([sys.argv[1]], progress=False), sys.argv[2])
print(json.dumps({"baseline_kb": baseline, "peak_kb": kb("VmHWM:"), "images": summary.num_images}))
"""


def converted_working_mb(tmp_path, images: int) -> tuple[float, float]:
    """(TSV size, the converter's peak RSS above its baseline), both in MiB, for a TSV of ``images`` images of 100
    boxes with 2,048-d features, converted in a fresh process."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((100, 2048)).astype(np.float32)
    boxes = np.tile(np.array([[1, 2, 30, 40]], np.float32), (100, 1))
    path = tmp_path / f"{images}.tsv"
    with open(path, "wb") as file:
        for image_id in range(images):
            file.write(b"\t".join([str(image_id).encode(), b"640", b"480", b"100", base64.b64encode(boxes.tobytes()),
                                   base64.b64encode((features + image_id).tobytes())]) + b"\r\n")
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp_path / f"store{images}")],
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["images"] == images
    size_mb = path.stat().st_size / 2**20
    path.unlink()
    return size_mb, (measured["peak_kb"] - measured["baseline_kb"]) / 1024


@pytest.mark.slow
def test_conversion_memory_is_flat(tmp_path) -> None:
    """A file three times larger (≈ 75 → 225 MiB of TSV) takes no more working memory (what the allocator keeps
    may differ by a few MiB), and little in all."""
    small_mb, small_working = converted_working_mb(tmp_path, 70)
    large_mb, large_working = converted_working_mb(tmp_path, 210)
    assert large_mb > 3 * small_mb - 1 and large_mb > 200
    assert large_working - small_working < 6, f"{small_working:.1f} MiB for {small_mb:.0f} MiB, " \
                                              f"{large_working:.1f} MiB for {large_mb:.0f} MiB"
    assert large_working < 32, f"converting {large_mb:.0f} MiB took {large_working:.0f} MiB above the baseline"
