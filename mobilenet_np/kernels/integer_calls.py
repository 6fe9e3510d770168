"""How the integer kernels are called: the thread split, and the memory bound calls share.

* **The split.**  ``parts(work)`` is how many threads a kernel call of ``work`` multiply-adds (or
  values written) uses: Numba's count, or 1 below ``SERIAL_BELOW`` and on a Python thread marked
  by ``one_thread`` (the fast graph's batch split runs one whole pass per thread) or inside
  ``serial()`` (the fast graph binds a program's kernels so: ``integer_program`` shares out their
  tasks itself).  Since the programs (2026-12-02), a kernel splits its own calls only when called
  on its own: in a pass with ``on_op``, or through the kernel functions.
* **Memory.**  ``Scratch`` is working memory shared by bound kernels that run one after another
  (the steps of one plan); ``remembered`` keeps a call's arrays for the next call to compare
  with ``is``; ``direct`` skips the dispatcher for a call made with the same arguments each time
  (the fast graph's plans); ``contiguous`` runs a computation into an array that may not be C-contiguous.

Used by ``integer_gemm``, ``integer_conv``, ``integer_depthwise`` and the fast graph (``forward/quantized_engine.py``).
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np


# Multiply-adds (or values written) below which a call runs on one thread.  A split costs ~3 us back to back
# and ~12 us when the pool last ran 300 us before (an empty 2-part call, T=2), and the next layer then reads
# data the other core wrote.  At batch 1, T=2, on the shared 2-core development VM: alone in a process the
# split policy made no difference beyond the noise (V2 0.5/96 int8 1354 / 1340 / 1336 us, V1 0.5/160 uint8
# 2699 / 2668 / 2655 us at 2^19 / 2^21 / never); beside LiteRT (int8_bench, its threads spinning between its
# calls) 2^19 ran V2 at 0.69 / 0.71 / 0.73x LiteRT's speed where 2^21 (no split) gave 0.60 / 0.42 / 0.52x,
# and 2^17 0.65 / 0.58x (alternating runs).
SERIAL_BELOW = 1 << 19

_thread = threading.local()


def one_thread(on: bool = True) -> None:
    """Make every kernel called from this Python thread run on it alone (a caller that splits
    the batch over its own threads sets it in each)."""
    _thread.serial = on


@contextlib.contextmanager
def serial():
    """Within the block, kernels bound on this thread run on it alone (``one_thread``), as the
    fast graph binds those of a plan whose program shares out the work itself (``integer_program``)."""
    before = on_one_thread()
    one_thread(True)
    try:
        yield
    finally:
        one_thread(before)


def on_one_thread() -> bool:
    return getattr(_thread, "serial", False)


def parts(work: int) -> int:
    """How many threads a kernel call of ``work`` units uses: Numba's count, or 1 for small calls
    and on a thread marked by ``one_thread``."""
    if work < SERIAL_BELOW or on_one_thread():
        return 1
    return numba.get_num_threads()


class Scratch:
    """Working memory for bound kernels that run one after another (the steps of one plan):
    ``take`` hands out the start of one shared buffer, replaced by a larger one when a request
    exceeds it (views handed out keep the old one), so the kernels of a pass share about the
    largest request instead of each keeping its own.  A step holds two at once (centred rows or
    gathered patches, and a padded output): ``scratch`` arguments are (input side, output side)."""

    def __init__(self):
        self.buffer = np.empty(0, np.uint8)

    def take(self, count: int, dtype) -> np.ndarray:
        size = count * np.dtype(dtype).itemsize
        if size > self.buffer.size:
            self.buffer = np.empty(size, np.uint8)
        return self.buffer[:size].view(dtype)

    @staticmethod
    def take_from(scratch, count: int, dtype) -> np.ndarray:
        """``scratch.take``, or a buffer of its own when ``scratch`` is None."""
        return np.empty(count, dtype) if scratch is None else scratch.take(count, dtype)


def direct(function, args: tuple):
    """For a compiled kernel called again and again with these very arguments: its compiled code for
    exactly their types (the overload's entry point, which skips the dispatcher's typing of each
    argument: ~0.5 us less per call), or ``function`` itself when it is not a Numba dispatcher or has
    nothing compiled for those types."""
    overloads = getattr(function, "overloads", None)
    if overloads is None:
        return function
    try:
        found = overloads.get(tuple(numba.typeof(a) for a in args))
    except ValueError:
        found = None
    return function if found is None else found.entry_point


def remembered(*arrays) -> tuple:
    """The arrays of a call, for the next call to compare with ``is``; a non-contiguous one is not
    remembered (its flat copy would not follow changes to it)."""
    return tuple(a if a.flags.c_contiguous else None for a in arrays)


def contiguous(out, compute):
    """compute(buffer) into ``out`` itself if it is C-contiguous, else through a copy."""
    if out.flags.c_contiguous:
        return compute(out)
    out[...] = compute(np.empty(out.shape, out.dtype))
    return out
