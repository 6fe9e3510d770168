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

from .pools import Pools  # noqa: F401 (the engines' pools: threads.Pools)


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
