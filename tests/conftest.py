"""Shared test helpers: where the reference fixtures live."""

from __future__ import annotations

from pathlib import Path

import pytest

# CI clones the repo next to a copy of shared/; a developer checkout has it beside the repo too.
OFFICIAL_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    if not OFFICIAL_FIXTURES.is_dir():
        pytest.fail(f"the reference fixtures are missing: expected them at {OFFICIAL_FIXTURES}")
    return OFFICIAL_FIXTURES
