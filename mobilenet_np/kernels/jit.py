"""The one place where Numba's compile options are chosen.

* ``nopython``/``nogil``: kernels hold no Python objects and release the GIL, so image decoding
  threads run beside inference.
* ``fastmath={"contract"}`` only: lets LLVM fuse a*b+c into one FMA (one rounding instead of two;
  measured drift against the reference is in tests/test_kernels.py).  No ``reassoc``, ``nnan``
  or ``ninf``: sums keep their written order, and NaN/inf propagate as in NumPy.
* ``error_model="numpy"``: no Python exception checks on float division.
* ``cache``: compiled machine code is kept on disk beside the module (``__pycache__``) so a new
  process does not recompile; set ``MOBILENET_NP_JIT_CACHE=0`` to measure a cold start without it.
"""

from __future__ import annotations

import os

import numba

CACHE = os.environ.get("MOBILENET_NP_JIT_CACHE", "1") != "0"
FASTMATH = {"contract"}


def kernel(parallel: bool = False, inline: bool = False):
    """Decorator for every compiled kernel of the package.  ``inline``: a helper that is
    spliced into its callers at Numba-IR level (a real call would pass every array argument
    as a multi-word struct, which costs more than a small tile of work)."""
    return numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy",
                      parallel=parallel, boundscheck=False, inline="always" if inline else "never")
