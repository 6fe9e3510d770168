"""The one place where Numba's compile options are chosen, and where compiling is announced.

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
* CPython 3.11's frame stack mapped and unmapped a chunk on every call at one depth of Numba's
  compiler (2.5x the compile time); ``frame_chunks.install()`` runs before the first compile.
* The cache: compiled machine code is kept in the user cache folder (``cache.py``), so a new
  process does not recompile; ``MOBILENET_NP_JIT_CACHE=0`` turns it off (to measure a cold start).

The first call of an entry point that is not in the cache compiles for tens of seconds, so it
says so once, on the ``mobilenet_np.compile`` logger (a WARNING, which Python prints on stderr
when logging is not configured): ``mobilenet-np: compiling kernels for this CPU (once, ...)``.
``MOBILENET_NP_QUIET=1`` or ``quiet()`` silences it.
"""

from __future__ import annotations

import logging
import os

import numba
from numba.core import event

from . import cache, frame_chunks

CACHE = os.environ.get("MOBILENET_NP_JIT_CACHE", "1") != "0"
FASTMATH = {"contract"}
_FOLDER = cache.usable_folder() if CACHE else None
cache._Locator.FOLDER = _FOLDER

announce = logging.getLogger("mobilenet_np.compile")
if os.environ.get("MOBILENET_NP_QUIET", "") not in ("", "0"):
    announce.setLevel(logging.ERROR)

# The entry points whose cold compile takes seconds (a compile of anything else is short, or
# part of one of these), and the estimate the message gives: everything, cold, on the 2-core
# development machine (13-18 s there in 2026-12, by its load; 11-15 s since run_plan's prange
# body became one call and the pool on its own NumPy, 2026-12-02).
ENTRY_POINTS = ("run_plan", "row_tasks", "shared_pass", "chunk_pass", "pointwise_tiles", "depthwise_rows", "stem_tasks",
                "input_rows")
COMPILE_SECONDS = 13
# The integer kernels (quantized models) are many small entry points, compiled as the graph
# first meets each op: any of them starts the one message, with its own estimate (a model's
# first run compiles the kinds of kernel it uses: 5-6 s for Google's uint8 V1 0.5/160 or an int8
# V2 0.5/96 on the 2-core AVX-512 VNNI machine, 2026-12-02; all of them, as ``warmup`` does,
# 9-11 s; int8 models run the uint8 forms, forward/quantized_engine.py).
INTEGER_MODULES = __package__ + ".integer_"
INTEGER_COMPILE_SECONDS = 6


def quiet(on: bool = True) -> None:
    """Silence (or restore) the one-line compile message."""
    announce.setLevel(logging.ERROR if on else logging.NOTSET)


class _Announcer(event.Listener):
    """Logs one line, once per process, when an entry point of this package starts compiling
    (Numba sends the event on a cache miss only)."""

    def __init__(self):
        self.said = False

    def on_start(self, ev):
        func = ev.data["dispatcher"].py_func
        if self.said or not func.__module__.startswith(__package__):
            return
        frame_chunks.install()        # before the compile: it ran 2.5x slower without (frame_chunks.py)
        if func.__module__.startswith(INTEGER_MODULES):
            seconds = INTEGER_COMPILE_SECONDS
        elif func.__name__ in ENTRY_POINTS:
            seconds = COMPILE_SECONDS
        else:
            return
        self.said = True
        where = f"cached in {_FOLDER}" if _FOLDER else "not cached"
        announce.warning("mobilenet-np: compiling kernels for this CPU (once, about %d s; %s)", seconds, where)

    def on_end(self, ev):
        pass


event.register("numba:compile", _Announcer())


def kernel(parallel: bool = False, inline: bool = False):
    """Decorator for every compiled kernel of the package.  ``inline``: a helper that is
    spliced into its callers at Numba-IR level (a real call would pass every array argument
    as a multi-word struct, which costs more than a small tile of work)."""
    jit = numba.njit(nogil=True, cache=False, fastmath=FASTMATH, error_model="numpy", _nrt=False,
                     parallel=parallel, boundscheck=False, inline="always" if inline else "never")

    def decorate(py_func):
        dispatcher = jit(py_func)
        if _FOLDER is not None:
            try:
                dispatcher._cache = cache.KernelCache(py_func)     # what cache=True does, in our folder
            except RuntimeError:      # "no locator": the folder stopped being writable; run uncached
                pass
        return dispatcher
    return decorate
