"""The one place where Numba's compile options are chosen.

* ``nopython``/``nogil``: kernels hold no Python objects and release the GIL, so image decoding
  threads run beside inference.
* ``fastmath={"contract"}`` only: lets LLVM fuse a*b+c into one FMA (one rounding instead of two;
  measured drift against the reference is in tests/test_kernels.py).  No ``reassoc``, ``nnan``
  or ``ninf``: sums keep their written order, and NaN/inf propagate as in NumPy.
* ``error_model="numpy"``: no Python exception checks on float division.
* ``_nrt=False``: no reference counting.  Kernels never allocate; they only take views of the
  caller's arrays, which outlive the call.  With counting on, every array handed to an inlined
  helper got an incref/decref pair that LLVM could not remove: two calls per GEMM tile, around
  which all twelve accumulators were spilled (the 1x1 layers with 16 input channels ran at
  half speed; measured in the change that turned it off).
* ``cache``: compiled machine code is kept on disk beside the module (``__pycache__``) so a new
  process does not recompile; set ``MOBILENET_NP_JIT_CACHE=0`` to measure a cold start without it.
  Numba checks a cached function against its own source file only, not against the code it
  inlines or calls from other files (``simd.py``, this file), and a stale entry can crash the
  process.  So the cache is emptied whenever any kernel source or the Numba version changes
  (``_drop_stale_cache``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

CACHE = os.environ.get("MOBILENET_NP_JIT_CACHE", "1") != "0"
_HERE = Path(__file__).resolve().parent
_CACHE_STAMP = "mobilenet_np_kernels.stamp"


def _drop_stale_cache(folder: Path = _HERE / "__pycache__") -> None:
    """Delete Numba cache files written for other kernel sources (best effort: a folder we
    cannot write is left to Numba, which then keeps its cache elsewhere)."""
    digest = hashlib.sha256(numba.__version__.encode())
    for source in sorted(_HERE.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    stamp = folder / _CACHE_STAMP
    try:
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        folder.mkdir(exist_ok=True)
        for stale in [*folder.glob("*.nbi"), *folder.glob("*.nbc")]:
            stale.unlink(missing_ok=True)
        tmp = folder / f".{_CACHE_STAMP}.{os.getpid()}"
        tmp.write_text(digest.hexdigest())
        os.replace(tmp, stamp)
    except OSError:
        pass


if CACHE:
    _drop_stale_cache()
FASTMATH = {"contract"}


def kernel(parallel: bool = False, inline: bool = False):
    """Decorator for every compiled kernel of the package.  ``inline``: a helper that is
    spliced into its callers at Numba-IR level (a real call would pass every array argument
    as a multi-word struct, which costs more than a small tile of work)."""
    return numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy", _nrt=False,
                      parallel=parallel, boundscheck=False, inline="always" if inline else "never")
