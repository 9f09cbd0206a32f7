"""Shared test fixtures: the real data folder beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10.npz").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
