"""Thread counts for one call, set and restored: Numba's parallel kernels and the BLAS library;
and the worker pools the engines split batches over (``Pools``).

On a small machine the two pools fight if both run wide (PERF-NOTES.md: OpenBLAS keeps a core
spinning after each call), so a call that asks for ``threads=n`` gets exactly n of each, and
the previous settings come back afterwards, even on error.  Nothing here changes a global
setting for longer than the ``with`` block.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor


@contextlib.contextmanager
def limit(threads: int | None, blas: bool = True):
    """Run the block with ``threads`` Numba and BLAS threads (None: leave both as they are).
    ``blas=False`` for a caller that calls no BLAS (the Numba engine): its BLAS setting is left
    alone, and the first call does not pay threadpoolctl's import and library scan (~13 ms)."""
    if threads is None:
        yield
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    threads = int(threads)
    with contextlib.ExitStack() as stack:
        if blas:
            stack.enter_context(_blas_controller().limit(limits=threads, user_api="blas"))
        numba = _numba()
        if numba is not None:
            previous = numba.get_num_threads()
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            stack.callback(numba.set_num_threads, previous)
        yield


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl finds whichever BLAS NumPy loaded (OpenBLAS, MKL, BLIS) and sets it in place;
    doing that by hand means ctypes calls specific to each library.  Finding the libraries takes
    milliseconds, so it is done once per process; each ``limit`` then costs microseconds."""
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def _numba():
    """Numba if it is installed (the NumPy reference backend runs without it), else None."""
    try:
        import numba
    except ImportError:
        return None
    return numba


class Pools:
    """Worker thread pools by size, each made on first use and kept, never shut down: a thread
    may be about to submit to the pool it was handed (a pool shut down under it raised), and an
    executor starts its threads only as work comes.  ``len``: how many have been made."""

    def __init__(self, name: str):
        self.name = name
        self._made: dict[int, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._made)

    def get(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            found = self._made.get(size)
            if found is None:
                found = self._made[size] = ThreadPoolExecutor(size, thread_name_prefix=self.name)
            return found
