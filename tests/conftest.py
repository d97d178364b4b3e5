"""Shared fixtures. Real data is read in place from ../shared/data (or $STFUSION_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("STFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real data; tests that need it skip with a reason when it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set STFUSION_SHARED_DATA to its folder)")
    return root


def need(root: Path, rel: str) -> Path:
    """A dataset folder below the shared data root, or skip with the reason."""
    path = root / rel
    if not path.exists():
        pytest.skip(f"{rel} not found under {root}")
    return path
