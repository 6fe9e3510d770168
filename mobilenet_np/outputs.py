"""Where embeddings go: an .h5 file (features, paths, failures, provenance) or an .npy file with
``.paths.txt`` and ``.failed.txt`` beside it, each written whole or not at all (``atomic.py``)
from the run's journal.  The Dask dataset writer (``distributed.py``) reuses these for single files.

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


def check_output_path(path: str) -> None:
    """Refuse an output before any work is done: a bad suffix, a missing or read-only folder,
    or a folder standing where the file would go."""
    if not path.lower().endswith(H5_SUFFIXES + (NPY_SUFFIX,)):
        raise ValueError(f"--output {path}: the name must end in .h5, .hdf5 or .npy")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--output {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--output {path}: is a folder; name a file ending in .h5, .hdf5 or .npy")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {path}: folder {folder} is not writable")


def check_paths_fit(output: str, paths) -> None:
    """An .npy output lists its rows' paths one a line, so no path may hold a line break:
    refuse the run up front (an .h5 output stores any path)."""
    if output.lower().endswith(NPY_SUFFIX):
        for path in paths:
            if "\n" in path or "\r" in path:
                raise ValueError(f"--output {output}: input {path!r} has a line break in its name, which the "
                                 ".npy output's .paths.txt cannot hold; write an .h5 output instead")


def write_output(path: str, journal: Journal, attrs: dict) -> None:
    """Write the journal's batches to ``path`` (.h5: everything; .npy: features, with
    ``.paths.txt`` and ``.failed.txt`` beside), each file replaced atomically.  Raises OSError
    naming ``path`` when the disk is full or the write fails; ``journal`` is never changed."""
    _check_space(path, journal)
    if path.lower().endswith(NPY_SUFFIX):
        stem = path[: -len(NPY_SUFFIX)]
        paths = (text_path(p) for batch in journal.batches() for p in batch.paths)
        failures = (f"{text_path(p)}\t{reason}" for p, reason in journal.failures)
        write_atomically(f"{stem}.paths.txt", lambda tmp: write_lines(tmp, paths))
        write_atomically(f"{stem}.failed.txt", lambda tmp: write_lines(tmp, failures))
        write_atomically(path, lambda tmp: _write_npy(tmp, journal))  # last: its presence means complete
    elif isinstance(journal, Journal):
        write_atomically(path, lambda tmp: _write_h5_in_child(tmp, journal, attrs))
    else:       # rows gathered by the Dask writer, not in a journal file: written here
        write_atomically(path, lambda tmp: _write_h5(tmp, journal, attrs))


def _check_space(path: str, journal) -> None:
    """Refuse to start a write that cannot fit: features, paths and a margin for HDF5's own
    structures, against the space free in the output's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    need = journal.rows * (journal.width * 4 + 512) + 64 * len(journal.failures) + (1 << 20)
    if need > free:
        raise OSError(errno.ENOSPC, f"cannot write {path}: about {need / 1e6:.1f} MB needed, "
                                    f"{free / 1e6:.1f} MB free in {folder}")


def _write_h5_in_child(tmp: str, journal: Journal, attrs: dict) -> None:
    """``_write_h5`` in a child process: a failed write (full disk) ends there, in a message."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    request = json.dumps({"tmp": tmp, "journal": journal.path, "width": journal.width, "attrs": attrs})
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
        _write_h5(request["tmp"], journal, request["attrs"])
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
    """The .npy header, then the rows batch by batch, with plain writes (see the module notes)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": (journal.rows, journal.width)}
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for batch in journal.batches():
            f.write(np.ascontiguousarray(batch.features, "<f4").tobytes())


def write_lines(tmp: str, lines) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)
