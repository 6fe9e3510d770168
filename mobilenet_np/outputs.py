"""Where embeddings go: an .h5 file (features, paths, failures, provenance) or an .npy file with
``.paths.txt`` and ``.failed.txt`` beside it, each written whole or not at all (``atomic.py``)
from the run's journal.  The Dask dataset writer (``distributed.py``) reuses these for single files.
"""

from __future__ import annotations

import os

import numpy as np

from .atomic import write_atomically
from .inputs import text_path
from .journal import Journal

H5_SUFFIXES = (".h5", ".hdf5")
NPY_SUFFIX = ".npy"


def check_output_path(path: str) -> None:
    if not path.lower().endswith(H5_SUFFIXES + (NPY_SUFFIX,)):
        raise ValueError(f"--output {path}: the name must end in .h5, .hdf5 or .npy")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--output {path}: folder {folder} does not exist")


def write_output(path: str, journal: Journal, attrs: dict) -> None:
    """Write the journal's batches to ``path`` (.h5: everything; .npy: features, with
    ``.paths.txt`` and ``.failed.txt`` beside), each file replaced atomically."""
    if path.lower().endswith(NPY_SUFFIX):
        stem = path[: -len(NPY_SUFFIX)]
        paths = (text_path(p) for batch in journal.batches() for p in batch.paths)
        failures = (f"{text_path(p)}\t{reason}" for p, reason in journal.failures)
        write_atomically(f"{stem}.paths.txt", lambda tmp: write_lines(tmp, paths))
        write_atomically(f"{stem}.failed.txt", lambda tmp: write_lines(tmp, failures))
        write_atomically(path, lambda tmp: _write_npy(tmp, journal))  # last: its presence means complete
    else:
        write_atomically(path, lambda tmp: _write_h5(tmp, journal, attrs))


def _write_h5(tmp: str, journal: Journal, attrs: dict) -> None:
    import h5py

    text = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        features = f.create_dataset("features", (journal.rows, journal.width), np.float32)
        paths = f.create_dataset("paths", (journal.rows,), text)
        row = 0
        for batch in journal.batches():
            end = row + len(batch.paths)
            features[row:end] = batch.features
            paths[row:end] = [text_path(p) for p in batch.paths]
            row = end
        failed = journal.failures
        f.create_dataset("failed_paths", data=np.array([text_path(p) for p, _ in failed], dtype=object), dtype=text)
        f.create_dataset("failed_errors", data=np.array([r for _, r in failed], dtype=object), dtype=text)
        f.attrs.update(attrs)


def _write_npy(tmp: str, journal: Journal) -> None:
    features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(journal.rows, journal.width))
    row = 0
    for batch in journal.batches():
        features[row : row + len(batch.paths)] = batch.features
        row += len(batch.paths)
    features.flush()
    del features


def write_lines(tmp: str, lines) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)
