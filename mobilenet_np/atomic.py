"""The package's one way to write a file: all of it or nothing.

``write_atomically(path, write)`` calls ``write(tmp)`` with a temporary name in ``path``'s own
folder, flushes it to disk and renames it over ``path``.  A reader sees the old file or the whole
new one, never a half-written one; on any failure (an exception, Ctrl-C, a full disk) the
temporary file is removed and ``path`` is left as it was.  Errors name ``path``, not the
temporary file.  Used by the weights-file writer, ``weights_tools`` and every output writer.
"""

from __future__ import annotations

import os
import uuid


def write_atomically(path: str | os.PathLike, write) -> None:
    """``write(tmp)`` creates the file ``tmp`` (so it gets the usual permissions), which then
    replaces ``path``.  Raises OSError naming ``path`` if its folder is missing or not writable."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    folder = folder or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder, not a file name")
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.filename == tmp or tmp in str(exc):
            raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _fsync(tmp: str) -> None:
    """Flush the finished file's data to disk before the rename makes it visible."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
