"""docs/layers.md's example runs as written and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

LAYERS_DOC = Path(__file__).resolve().parents[1] / "docs" / "layers.md"


def test_the_ban_block_example_runs_and_prints_its_comments():
    text = LAYERS_DOC.read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    expected = [line.split("# ", 1)[1].split(":")[0] for line in code.splitlines() if line.startswith("print(")]
    torch.manual_seed(0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(LAYERS_DOC), "exec"), {"__name__": "docs_example"})
    assert printed.getvalue().splitlines() == expected
