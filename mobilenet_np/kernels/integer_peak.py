"""Tight ``madd`` (``vpmaddwd``) and ``dot4`` (``vpdpbusd``) loops that measure this CPU's integer multiply-add peak.

Used by ``benchmarks/int8_bench.py`` to state the integer kernels' GMAC/s as a fraction of what
one core can do: each step loads two weight vectors and four broadcast pairs (from a 1 KiB array,
the index varying so nothing is hoisted) and does eight independent ``madd`` (16 multiply-adds
each), the inner loop of ``integer_gemm``'s 4 x 16 tile without its memory traffic.
``madd_loop_numpy`` is its plain twin (same sums, for the test).  ``dot4_loop`` is the same for
``integer_dot4``'s 8 x 16 tile: one weight vector and eight broadcast quads per step, eight
independent ``dot4`` (64 multiply-adds each; the peak where the CPU has AVX-512 VNNI).
"""

from __future__ import annotations

import numpy as np

from . import integer_simd as iv
from . import integer_wide as iw
from .jit import kernel


@kernel()
def madd_loop(w, steps, out):
    """out[0:8] = lane sums of ``steps`` steps of 8 madds over w (int16, at least 512 values)."""
    a0 = iv.zeros()
    a1 = iv.zeros()
    a2 = iv.zeros()
    a3 = iv.zeros()
    b0 = iv.zeros()
    b1 = iv.zeros()
    b2 = iv.zeros()
    b3 = iv.zeros()
    for i in range(steps):
        at = (i & 7) * 32
        wa = iv.load_pairs(w, at)
        wb = iv.load_pairs(w, at + 16)
        a0 = iv.madd(a0, iv.splat_pair(w, 256 + at), wa)
        b0 = iv.madd(b0, iv.splat_pair(w, 256 + at), wb)
        a1 = iv.madd(a1, iv.splat_pair(w, 258 + at), wa)
        b1 = iv.madd(b1, iv.splat_pair(w, 258 + at), wb)
        a2 = iv.madd(a2, iv.splat_pair(w, 260 + at), wa)
        b2 = iv.madd(b2, iv.splat_pair(w, 260 + at), wb)
        a3 = iv.madd(a3, iv.splat_pair(w, 262 + at), wa)
        b3 = iv.madd(b3, iv.splat_pair(w, 262 + at), wb)
    iv.store(out, 0, iv.add(iv.add(iv.add(a0, b0), iv.add(a1, b1)), iv.add(iv.add(a2, b2), iv.add(a3, b3))))


def madd_loop_numpy(w: np.ndarray, steps: int) -> np.ndarray:
    """The NumPy twin of ``madd_loop`` (int32 wrap-around included)."""
    w32 = w.astype(np.int64)
    total = np.zeros(8, np.int64)
    for i in range(steps):
        at = (i & 7) * 32
        for half in (0, 16):
            wv = w32[at + half:at + half + 16].reshape(8, 2)
            for r in range(4):
                total += wv @ w32[256 + at + 2 * r:256 + at + 2 * r + 2]
    return ((total + 2**31) % 2**32 - 2**31).astype(np.int32)


@kernel()
def dot4_loop(w, x, steps, out):
    """out[0:16] = lane sums of ``steps`` steps of 8 dot4s: weights from w (int16 view of int8, at
    least 256 values), input quads from x (uint8, at least 288 bytes)."""
    a0 = iw.zeros16()
    a1 = iw.zeros16()
    a2 = iw.zeros16()
    a3 = iw.zeros16()
    a4 = iw.zeros16()
    a5 = iw.zeros16()
    a6 = iw.zeros16()
    a7 = iw.zeros16()
    for i in range(steps):
        at = (i & 3) * 64
        wq = iw.load_quads(w, at)
        a0 = iw.dot4(a0, iw.splat_quad(x, at), wq)
        a1 = iw.dot4(a1, iw.splat_quad(x, at + 4), wq)
        a2 = iw.dot4(a2, iw.splat_quad(x, at + 8), wq)
        a3 = iw.dot4(a3, iw.splat_quad(x, at + 12), wq)
        a4 = iw.dot4(a4, iw.splat_quad(x, at + 16), wq)
        a5 = iw.dot4(a5, iw.splat_quad(x, at + 20), wq)
        a6 = iw.dot4(a6, iw.splat_quad(x, at + 24), wq)
        a7 = iw.dot4(a7, iw.splat_quad(x, at + 28), wq)
    iv.store_bytes(out, 0, iv.add(iv.add(iv.add(a0, a1), iv.add(a2, a3)), iv.add(iv.add(a4, a5), iv.add(a6, a7))))


def dot4_loop_numpy(w: np.ndarray, x: np.ndarray, steps: int) -> np.ndarray:
    """The NumPy twin of ``dot4_loop``: its sixteen int32 lane sums, as the low bytes it stores."""
    wb = w.view(np.int8).astype(np.int64)
    total = np.zeros(16, np.int64)
    for i in range(steps):
        at = (i & 3) * 64
        lanes = wb[at:at + 64].reshape(16, 4)
        for r in range(8):
            total += lanes @ x[at + 4 * r:at + 4 * r + 4].astype(np.int64)
    return (total % 256).astype(np.uint8)
