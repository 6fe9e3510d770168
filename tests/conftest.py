"""Shared fixtures: the seeded RNG and the location of the real data in ../shared."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_NP_SHARED", REPO.parent / "shared"))


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def shared_path(*parts: str) -> Path:
    """A file under ../shared (override with MOBILENET_NP_SHARED); skip the test if absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set MOBILENET_NP_SHARED to the shared/ folder)")
    return path


@pytest.fixture
def shared():
    return shared_path
