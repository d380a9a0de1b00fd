"""Ctrl-C on `ban synth` with worker processes: a terminal sends SIGINT to the whole process group, the pool's
workers included. Each worker died with a traceback of its own (73 lines before "ban synth: interrupted"); they
leave it to the parent, which stops the pool and says it in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_ctrl_c_to_the_process_group_is_one_line_and_keeps_nothing(tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    process = subprocess.Popen(  # (a set that takes a minute or more: the signal comes long before its end)
        [sys.executable, "-m", "ban.cli", "synth", "--out", str(out), "--images", "100000", "--feature-dim", "16",
         "--flickr-images", "0", "--no-png", "--workers", "2", "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(path.is_file() and path.stat().st_size for path in tmp_path.rglob("*")):  # the workers' first
        assert process.poll() is None and time.monotonic() < deadline  # results are being written
        time.sleep(0.05)
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip() == "ban synth: interrupted"
    assert not out.exists() and list(tmp_path.iterdir()) == []
