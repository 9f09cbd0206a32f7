"""Shared test fixtures: the real data folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# train.precision=auto picks bf16 on CPUs with AMX / AVX512-BF16: pin the detection so that the suite computes the
# same numbers on every CPU (and in the CLI subprocesses it starts); bf16 is tested where a test asks for it.
os.environ["DYTRIM_CPU_BF16"] = "0"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10.npz").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
