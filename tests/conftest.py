"""Shared fixtures: the seeded RNG and the location of the real data in ../shared."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

# The engine's tests test the engine: no NumPy answers while a cold cache compiles in the
# background (forward/tiered.py; tests/test_tiered.py turns it on in its own subprocesses).
os.environ.setdefault("MOBILENET_NP_TIERED", "0")

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


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims width x height pixels (a cheap bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
