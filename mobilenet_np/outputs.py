"""Where embeddings go: an .h5 file (features, paths, failures, provenance), an .npy file with
``.paths.txt`` and ``.failed.txt`` beside it, an .npz file (all of it in one NumPy archive) or a
.parquet file (the schema of the Dask dataset's part files; needs pyarrow), each written whole
or not at all (``atomic.py``) from the run's journal, as float32 or float16, L2-normalised or
not.  The Dask dataset writer (``distributed.py``) reuses these for single files.

A full disk must end in a clear error with the journal kept, never a crash: the free space is
checked before writing, the .npy is streamed with plain writes (a memory map of a file on a
full disk dies of SIGBUS), and the .h5 is written by a child process, because h5py crashes
its process (a segfault while cleaning up) when a write fails.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np

from .atomic import write_atomically
from .inputs import text_path
from .journal import Journal

H5_SUFFIXES = (".h5", ".hdf5")
NPY_SUFFIX = ".npy"
NPZ_SUFFIX = ".npz"
PARQUET_SUFFIX = ".parquet"
OUTPUT_SUFFIXES = H5_SUFFIXES + (NPY_SUFFIX, NPZ_SUFFIX, PARQUET_SUFFIX)
DTYPES = ("float32", "float16")
NORMALIZATIONS = ("l2",)
#: The key of the Parquet schema metadata holding the run's provenance and failures.
PARQUET_METADATA_KEY = "mobilenet_np"


def check_output_path(path: str) -> None:
    """Refuse an output before any work is done: a bad suffix, a missing or read-only folder,
    a folder standing where the file would go, or a missing pyarrow for .parquet."""
    if not path.lower().endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--output {path}: the name must end in .h5, .hdf5, .npy, .npz or .parquet")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--output {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--output {path}: is a folder; name a file ending in .h5, .hdf5, .npy, .npz or .parquet")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {path}: folder {folder} is not writable")
    if path.lower().endswith(PARQUET_SUFFIX):
        import pyarrow  # noqa: F401  (missing: the caller names the extra to install, before any work)


def check_paths_fit(output: str, paths) -> None:
    """An .npy output lists its rows' paths one a line, so no path may hold a line break:
    refuse the run up front (the other outputs store any path)."""
    if output.lower().endswith(NPY_SUFFIX):
        for path in paths:
            if "\n" in path or "\r" in path:
                raise ValueError(f"--output {output}: input {path!r} has a line break in its name, which the "
                                 ".npy output's .paths.txt cannot hold; write an .h5, .npz or .parquet output")


def finish(features: np.ndarray, dtype: str = "float32", normalize: str | None = None) -> np.ndarray:
    """Rows as stored: L2-normalised (``normalize="l2"``; all-zero rows stay zero), in float32
    arithmetic, then cast to ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if normalize not in (None, *NORMALIZATIONS):
        raise ValueError(f"normalize must be 'l2' or None, got {normalize!r}")
    features = np.asarray(features, np.float32)
    if normalize == "l2":
        norms = np.sqrt(np.einsum("ij,ij->i", features, features))[:, None]
        features = features / np.where(norms > 0, norms, np.float32(1))
    return features.astype(dtype, copy=False)


def write_output(path: str, journal: Journal, attrs: dict, dtype: str = "float32",
                 normalize: str | None = None) -> None:
    """Write the journal's batches to ``path`` (.h5: everything; .npy: features, with
    ``.paths.txt`` and ``.failed.txt`` beside; .npz and .parquet: everything in one file), each
    file replaced atomically; rows as ``finish`` makes them.  Raises OSError naming ``path``
    when the disk is full or the write fails; ``journal`` is never changed."""
    _check_space(path, journal)
    in_file = journal if isinstance(journal, Journal) else None      # the Dask writer gathers rows
    journal = _Finished(journal, dtype, normalize)
    attrs = {**attrs, "dtype": dtype, "normalize": normalize or "none"}
    lower = path.lower()
    if lower.endswith(NPZ_SUFFIX):
        write_atomically(path, lambda tmp: _write_npz(tmp, journal, attrs))
    elif lower.endswith(PARQUET_SUFFIX):
        write_atomically(path, lambda tmp: _write_parquet(tmp, journal, attrs))
    elif lower.endswith(NPY_SUFFIX):
        stem = path[: -len(NPY_SUFFIX)]
        paths = (text_path(p) for batch in journal.batches() for p in batch.paths)
        failures = (f"{text_path(p)}\t{reason}" for p, reason in journal.failures)
        write_atomically(f"{stem}.paths.txt", lambda tmp: write_lines(tmp, paths))
        write_atomically(f"{stem}.failed.txt", lambda tmp: write_lines(tmp, failures))
        write_atomically(path, lambda tmp: _write_npy(tmp, journal))  # last: its presence means complete
    elif in_file is not None:
        write_atomically(path, lambda tmp: _write_h5_in_child(tmp, in_file, attrs, dtype, normalize))
    else:
        write_atomically(path, lambda tmp: _write_h5(tmp, journal, attrs))


def _check_space(path: str, journal) -> None:
    """Refuse to start a write that cannot fit: features, paths and a margin for the formats'
    own structures, against the space free in the output's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    need = journal.rows * (journal.width * 4 + 512) + 64 * len(journal.failures) + (1 << 20)
    if need > free:
        raise OSError(errno.ENOSPC, f"cannot write {path}: about {need / 1e6:.1f} MB needed, "
                                    f"{free / 1e6:.1f} MB free in {folder}")


def _write_h5_in_child(tmp: str, journal: Journal, attrs: dict, dtype: str, normalize: str | None) -> None:
    """``_write_h5`` in a child process: a failed write (full disk) ends there, in a message."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    request = json.dumps({"tmp": tmp, "journal": journal.path, "width": journal.width, "attrs": attrs,
                          "dtype": dtype, "normalize": normalize})
    child = subprocess.run([sys.executable, "-c", "from mobilenet_np.outputs import _h5_child; _h5_child()"],
                           input=request, capture_output=True, text=True, env=env)
    if child.returncode == 0:
        return
    if child.returncode < 0:
        reason = f"the writer crashed ({signal.Signals(-child.returncode).name}); is the disk full?"
    else:
        reason = (child.stderr.strip().splitlines() or ["unknown error"])[-1]
    raise OSError(errno.EIO, reason)


def _h5_child() -> None:
    """The child's side of ``_write_h5_in_child``: the request on stdin, one line on failure."""
    request = json.load(sys.stdin)
    journal = Journal.read(request["journal"], request["width"])
    try:
        _write_h5(request["tmp"], _Finished(journal, request["dtype"], request["normalize"]), request["attrs"])
    except Exception as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)        # not a normal exit: h5py's cleanup of a failed file can crash
    finally:
        journal.close()


def _write_h5(tmp: str, journal: Journal, attrs: dict) -> None:
    import h5py

    text = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        features = f.create_dataset("features", (journal.rows, journal.width), journal.dtype)
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


def _write_npy(tmp: str, journal) -> None:
    """The .npy header, then the rows batch by batch, with plain writes (see the module notes)."""
    kind = np.dtype(journal.dtype).newbyteorder("<")
    header = {"descr": np.lib.format.dtype_to_descr(kind), "fortran_order": False,
              "shape": (journal.rows, journal.width)}
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for batch in journal.batches():
            f.write(np.ascontiguousarray(batch.features, kind).tobytes())


def _write_npz(tmp: str, journal, attrs: dict) -> None:
    """features [N, D], paths [N] and failed_paths / failed_errors as text arrays, and the
    provenance as one JSON string (``attrs``): ``np.load(path)`` needs no pickle."""
    batches = list(journal.batches())
    failed = journal.failures
    with open(tmp, "wb") as f:
        np.savez(f, features=_stacked(batches, journal), paths=np.array(_paths(batches), dtype=str),
                 failed_paths=np.array([text_path(p) for p, _ in failed], dtype=str),
                 failed_errors=np.array([r for _, r in failed], dtype=str), attrs=np.array(json.dumps(attrs)))


def _write_parquet(tmp: str, journal, attrs: dict) -> None:
    """Columns ``path`` (string) and ``features`` (fixed-size list of the dtype), as the Dask
    dataset's part files; provenance and failures in the schema metadata."""
    batches = list(journal.batches())
    failures = [[text_path(p), reason] for p, reason in journal.failures]
    write_parquet(tmp, _paths(batches), _stacked(batches, journal), PARQUET_METADATA_KEY,
                  {"attrs": attrs, "failures": failures})


def write_parquet(path: str, paths: list[str], features: np.ndarray, key, metadata: dict) -> None:
    """One Parquet file of embeddings: ``path`` (string) and ``features`` (a fixed-size list of
    the rows' dtype, float32 or float16), with ``metadata`` as JSON under ``key`` in the schema.
    The single-file output and the Dask dataset's part files are both written by this."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = pa.float16() if features.dtype == np.float16 else pa.float32()
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), kind), features.shape[1])
    table = pa.table({"path": pa.array(paths, pa.string()), "features": column})
    pq.write_table(table.replace_schema_metadata({key: json.dumps(metadata)}), path)


def _stacked(batches, journal) -> np.ndarray:
    if not batches:
        return np.empty((0, journal.width), journal.dtype)
    return np.concatenate([b.features for b in batches])


def _paths(batches) -> list[str]:
    return [text_path(p) for b in batches for p in b.paths]


class _Finished:
    """A journal whose batches come out as ``finish`` makes them."""

    def __init__(self, journal: Journal, dtype: str, normalize: str | None):
        finish(np.zeros((1, 1), np.float32), dtype, normalize)      # refuse bad options before writing
        self._journal, self.dtype, self._normalize = journal, dtype, normalize
        self.rows, self.width, self.failures = journal.rows, journal.width, journal.failures

    def batches(self):
        for batch in self._journal.batches():
            yield type(batch)(batch.paths, finish(batch.features, self.dtype, self._normalize), batch.failures)


def write_lines(tmp: str, lines) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)
