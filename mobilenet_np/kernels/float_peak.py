"""A tight ``simd.fma`` loop that measures this CPU's float32 multiply-add peak per core.

Used by ``benchmarks/run.py`` to state the float kernels' GMAC/s as a fraction of what one core
can do: twelve independent accumulators (enough to keep two FMA units busy through their
latency), each step one FMA into each from registers, LANES multiply-adds apiece.  NumPy's BLAS
is measured beside it: OpenBLAS ran its AVX2 kernels on the AMD AVX-512 machine (53 GMAC/s
against this loop's 122 in 2026-12), so its SGEMM is no peak there.  ``fma_loop_numpy`` is the plain twin.
"""

from __future__ import annotations

import numpy as np

from . import simd
from .jit import kernel

ACCUMULATORS = 12


@kernel()
def fma_loop(w, steps, out):
    """out[k * LANES : (k + 1) * LANES] = accumulator k after ``steps`` steps of acc = x * y + acc,
    each accumulator starting at w[0:LANES], x = w[LANES:2 LANES], y = w[2 LANES:3 LANES]."""
    lanes = simd.LANES
    x = simd.load(w, lanes)
    y = simd.load(w, 2 * lanes)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = simd.load(w, 0)
    for _ in range(steps):
        a0, a1, a2, a3 = simd.fma(x, y, a0), simd.fma(x, y, a1), simd.fma(x, y, a2), simd.fma(x, y, a3)
        a4, a5, a6, a7 = simd.fma(x, y, a4), simd.fma(x, y, a5), simd.fma(x, y, a6), simd.fma(x, y, a7)
        a8, a9, a10, a11 = simd.fma(x, y, a8), simd.fma(x, y, a9), simd.fma(x, y, a10), simd.fma(x, y, a11)
    simd.store(out, 0, a0)
    simd.store(out, lanes, a1)
    simd.store(out, 2 * lanes, a2)
    simd.store(out, 3 * lanes, a3)
    simd.store(out, 4 * lanes, a4)
    simd.store(out, 5 * lanes, a5)
    simd.store(out, 6 * lanes, a6)
    simd.store(out, 7 * lanes, a7)
    simd.store(out, 8 * lanes, a8)
    simd.store(out, 9 * lanes, a9)
    simd.store(out, 10 * lanes, a10)
    simd.store(out, 11 * lanes, a11)


def fma_loop_numpy(w: np.ndarray, steps: int) -> np.ndarray:
    """The plain twin of ``fma_loop``: each step x * y + acc in float64 (the product is exact
    there), rounded to float32 -- a fused multiply-add's one rounding, but for the rare sums that
    round twice to a different float32 (none in the test's data)."""
    lanes = simd.LANES
    acc = w[:lanes].astype(np.float32)
    product = w[lanes:2 * lanes].astype(np.float64) * w[2 * lanes:3 * lanes].astype(np.float64)
    for _ in range(steps):
        acc = (product + acc.astype(np.float64)).astype(np.float32)
    return np.tile(acc, ACCUMULATORS)


def fma_peak(seconds: float = 0.3) -> float:
    """GMAC/s of one core on ``fma_loop`` (the best of its runs over ``seconds``)."""
    import time
    w = np.full(3 * simd.LANES, 1e-3, np.float32)
    out = np.zeros(ACCUMULATORS * simd.LANES, np.float32)
    fma_loop(w, 1000, out)
    n, best = 1 << 20, 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fma_loop(w, n, out)
        best = max(best, n * ACCUMULATORS * simd.LANES / (time.perf_counter() - start) / 1e9)
    return best
