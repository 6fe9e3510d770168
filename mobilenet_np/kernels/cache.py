"""Where compiled kernels are kept between processes, and how a bad cache is survived.

Numba's own ``cache=True`` writes beside the source (``__pycache__``), which breaks read-only
installs, leaves files that ``pip uninstall`` does not remove, and makes ``import`` fail when no
folder is writable.  Here every kernel gets a ``KernelCache`` instead, rooted in the user cache
folder: ``$MOBILENET_NP_HOME/kernels``, else ``$XDG_CACHE_HOME/mobilenet-np/kernels``, else
``~/.cache/mobilenet-np/kernels``, in a subfolder named by a digest of every kernel source, the
Numba and the Python version.  Numba checks a cached function against its own source file only,
not against the code it inlines from other files (``simd.py``, ``gemm.py``), and a stale entry
can crash the process; the digest makes a changed source a different folder.

* Unwritable folder: one warning, and the kernels compile without a cache (never an import error).
* Corrupted, truncated or empty entry: one warning, the entry's files are removed and the
  function is compiled again; a call never fails because of the cache.
* Two processes compiling at once: Numba writes each file to a temporary name and renames it;
  the read-modify-write of an index runs under a file lock, so that two processes never give
  one data file to two signatures.

* Old folders: a folder that no process has used for 30 days (``prune``) is removed when the
  package is imported.
* Complete for this CPU: a ``ready-<cpu>-<digest>`` marker file, written once every entry point
  of the engine is in (``forward/tiered.py`` checks it to decide whether to start tiered).

This module does not decide what is compiled or when; ``jit.py`` uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import numba
from numba.core import caching

log = logging.getLogger("mobilenet_np")
_HERE = Path(__file__).resolve().parent


def root() -> Path:
    """The kernel cache folder for this user (not yet created)."""
    home = os.environ.get("MOBILENET_NP_HOME")
    if home:
        return Path(home).expanduser() / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mobilenet-np" / "kernels"


def sources_digest() -> str:
    """A digest of every kernel source file, the Numba and the Python version, and the vector
    width the float kernels are compiled for and whether ``dot4`` is VNNI's instruction
    (``simd.LANES``, ``integer_wide.DOT4_VNNI``: globals, which Numba's cache does not check, and
    which ``MOBILENET_NP_VECTOR_LANES`` / ``MOBILENET_NP_DOT4`` can change on the same CPU)."""
    from .integer_wide import DOT4_VNNI
    from .simd import LANES
    digest = hashlib.sha256(f"{numba.__version__} {sys.version} lanes={LANES} vnni={DOT4_VNNI}".encode())
    for source in sorted(_HERE.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def usable_folder() -> Path | None:
    """This process's cache folder, created and checked writable; None (after one warning) when
    it cannot be, so that the kernels compile without a cache."""
    folder = root() / sources_digest()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        (folder / USED).touch()
    except OSError as e:
        log.warning("mobilenet-np: kernel cache folder %s is not writable (%s); compiling without a cache "
                    "(set MOBILENET_NP_HOME to a writable folder)", folder, e.strerror or e)
        return None
    prune(folder)
    return folder


USED = ".used"            # touched by every process that uses a folder
PRUNE_DAYS = 30


def prune(current: Path, days: float = PRUNE_DAYS) -> list[Path]:
    """Remove the other digest folders beside ``current`` that no process has used for ``days``
    (each version or edit of the kernels gets a folder of a few MB; without this they pile up).
    A folder in use by another install is touched by every process using it, so it stays.
    Errors are ignored: a folder that cannot be removed now is tried again next time."""
    import shutil
    import time
    cutoff = time.time() - days * 86400
    removed = []
    try:
        siblings = [p for p in current.parent.iterdir()
                    if p != current and p.is_dir() and len(p.name) == 16 and all(c in "0123456789abcdef" for c in p.name)]
    except OSError:
        return removed
    for folder in siblings:
        stamp = folder / USED
        try:
            used = (stamp if stamp.exists() else folder).stat().st_mtime
        except OSError:
            continue
        if used < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class _Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba's locator protocol, pointing at ``FOLDER`` (set once by ``jit.py``)."""

    FOLDER: Path | None = None

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self):
        return str(self.FOLDER)

    @classmethod
    def from_function(cls, py_func, py_file):
        if cls.FOLDER is None:
            return None
        return super().from_function(py_func, py_file)


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


class KernelCache(caching.FunctionCache):
    """A Numba function cache in ``_Locator.FOLDER`` that recovers from bad entries."""

    _impl_class = _Impl

    def load_overload(self, sig, target_context):
        try:
            return self._load_without_refresh(sig, target_context)
        except Exception:          # noqa: BLE001 - then the way Numba does it, which can tell a damaged file
            pass
        try:
            return super().load_overload(sig, target_context)
        except Exception as e:     # unpickling a damaged file can raise almost anything
            self._drop(f"could not be read ({type(e).__name__}: {e})")
            return None

    def _load_without_refresh(self, sig, target_context):
        """Numba's ``load_overload`` without its ``target_context.refresh()``: that imports every
        typing and lowering module Numba has (~1 s, the largest part of a warm start), which
        only compiling needs, and Numba's compiler refreshes by itself before it compiles.
        Loading machine code needs only the runtime's symbols, registered here."""
        from numba.core.runtime import rtsys
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    def save_overload(self, sig, data):
        try:
            with self._locked():
                super().save_overload(sig, data)
        except Exception as e:     # e.g. a damaged index: the compiled code is still good
            self._drop(f"could not be updated ({type(e).__name__}: {e})")
            try:
                with self._locked():
                    super().save_overload(sig, data)
            except Exception:
                pass

    def _files(self) -> list[Path]:
        base = self._cache_file._index_name[:-len(".nbi")]
        return sorted(Path(self._cache_path).glob(f"{base}.*"))

    def _drop(self, why: str) -> None:
        """Remove this function's index and data files, with one warning."""
        log.warning("mobilenet-np: kernel cache entry %s %s; removed, compiling again",
                    self._cache_file._index_name, why)
        for path in self._files():
            with contextlib.suppress(OSError):
                path.unlink()

    def _locked(self):
        return folder_lock(self._cache_path, ".lock")


@contextlib.contextmanager
def folder_lock(folder, name: str):
    """An exclusive lock on a file in the cache folder (POSIX; elsewhere Numba's renames alone)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(os.path.join(folder, name), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ready_marker(folder) -> Path:
    """The file that says: every entry point of the engine is in ``folder`` for this CPU (Numba
    keys each entry by the CPU name and features, as here; ``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES`` override both)."""
    from llvmlite import binding
    from numba.core import config
    cpu = config.CPU_NAME or binding.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else binding.get_host_cpu_features().flatten()
    key = hashlib.sha256(f"{cpu} {features}".encode()).hexdigest()[:12]
    return Path(folder) / f"ready-{cpu}-{key}"


def mark_ready(marker: Path) -> None:
    """Write the ready marker (atomically: a marker is never half there)."""
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text("compiled kernels complete for this CPU\n")
    os.replace(tmp, marker)
