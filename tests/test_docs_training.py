"""docs/training.md lists every training setting and model field with the default the code has, written as
`--set` reads it back."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ban.engine.config import TrainConfig, apply_overrides
from ban.models import BANConfig

TRAINING_DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def documented(section: str) -> dict[str, str]:
    """The ``| `name` | `default` | … |`` rows of the table under the heading ``section``."""
    text = TRAINING_DOC.read_text(encoding="utf-8").split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_0-9]+)` \| `([^`]*)` \|", text, re.M))


def test_every_training_setting_is_documented_with_its_default():
    rows = documented("Training settings")
    assert list(rows) == [field.name for field in dataclasses.fields(TrainConfig)]
    assert apply_overrides(TrainConfig(batch_size=1, epochs=1, val_split="x"), rows) == TrainConfig()


@pytest.mark.parametrize("field", dataclasses.fields(BANConfig), ids=lambda field: field.name)
def test_every_model_field_is_documented_with_its_default(field):
    rows = documented("Model fields")
    assert list(rows) == [f.name for f in dataclasses.fields(BANConfig)]
    value = getattr(BANConfig(), field.name)
    assert rows[field.name] == (str(value).lower() if isinstance(value, bool) else str(value))
