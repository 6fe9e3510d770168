"""The integer 3 x 3 depthwise convolution on four-byte dot products (AVX-512 VNNI's ``vpdpbusd``).

``integer_depthwise`` widens each tap's bytes to int32 lanes and multiplies them by int16
weights (``vpmaddwd`` with zero odd halves: one multiply-add per lane and instruction, plus an
add and a widening shuffle).  Here a window column's three taps share a lane: ``gather_taps``
loads the 16 channels' bytes of the column's three rows and transposes them (byte dy of lane c:
row dy of channel c; byte 3 meets a zero weight), and one ``dot4`` multiplies and adds all three.
A pixel is three columns, three ``dot4``; along a row at stride 1 each column serves three
pixels, so a pixel gathers one new column (two at stride 2).  The loop runs a block of 16
channels across the row (its weights and requantization in registers: ``block_params``), the
blocks one after another.

* The input bytes are used as they are (uint8: the fast graph holds int8 activations as uint8 +
  128), the input zero point folded into the bias as ``integer_depthwise.fold_zero_point`` does
  (the same ``params``).  A tap in the padding reads the zero point (``gather_taps_checked``:
  the tap then adds zp * w, which the folded bias takes away).
* The weights, centred on their zero point, are signed bytes.  When a channel's nine centred
  weights span more than int8 (uint8 models: w - zp lies in [-255, 255]), each is split into
  (w - zp - s) + s with s chosen per channel so that both are int8 (``pack_taps``: possible
  whenever the nine span at most 255, as bytes on one zero point do, unless a weight lies 255
  above it); the kernel then adds each column's products with s too (six ``dot4`` a pixel:
  exact int32 sums, the same bytes).
* Sixteen channels at a time: used where C is a multiple of 16 (``Depthwise`` keeps the
  widening kernel otherwise, and for other kernel sizes).  Output rows (image, row) split over
  threads as ``integer_depthwise`` does, with the same signature (the program's rows,
  ``integer_program``, call either).

Measured alone (2026-12-02, AVX-512 VNNI, GMAC/s, the widening kernel in brackets): stride 1
35-48 (17-20), stride 2 26-29 (17-19); the uint8 split form 31-43 (18-22).  Tested against
``integer_reference`` through ``integer_depthwise.Depthwise``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import integer_simd as iv
from . import integer_wide as iw
from .jit import kernel
from .table import call

GROUP = 64          # bytes of one weight vector: 16 channels x 4 bytes
NEG = -(1 << 60)    # a tap offset in the padding (stays negative when a channel offset is added)


def usable(k: int, c: int) -> bool:
    """Whether a k x k layer of C channels should run here: 3 x 3, C a multiple of 16, and
    ``dot4`` the VNNI instruction (its portable IR is slower than the widening kernel)."""
    return iw.DOT4_VNNI and k == 3 and c % 16 == 0


def pack_taps(packed: np.ndarray, c: int):
    """``integer_depthwise.pack_depthwise``'s centred int16 taps [9, C8] (3 x 3) -> (int8 columns,
    flat, viewed as int16; True if split) or None (no split fits a channel's weights).  Per block
    of 16 channels, one vector per window column dx: [16 channels, rows dy = 0, 1, 2 and a zero];
    split, then a fourth: the per-channel s in bytes 0-2."""
    c8 = packed.size // 9
    taps = packed[:9 * c8].reshape(9, c8)[:, :c].astype(np.int32)
    lo, hi = taps.min(axis=0), taps.max(axis=0)
    s = np.maximum(hi - 127, 0) + np.minimum(lo + 128, 0)     # taps - s in [-128, 127] if hi - lo <= 255
    if np.any(hi - lo > 255) or np.any(s > 127):
        return None
    split = bool(np.any(s != 0))
    groups = np.zeros((c // 16, 4 if split else 3, 16, 4), np.int8)
    centred = (taps - s).reshape(3, 3, c // 16, 16)             # [dy, dx, block, channel]
    groups[:, :3, :, :3] = centred.transpose(2, 1, 3, 0)        # [block, dx, channel, dy]
    if split:
        groups[:, 3, :, :3] = np.asarray(s).reshape(c // 16, 16, 1)
    return groups.reshape(-1).view(np.int16), split


def zero_bytes(zero_point: int) -> np.ndarray:
    """Sixteen bytes of the input zero point (int32 [4], as the kernels' ``zpw`` argument)."""
    return np.full(16, zero_point, np.uint8).view(np.int32)


@kernel(inline=True)
def _sums(bias, g0, g1, g2, w0, w1, w2, s, split):
    """The sixteen sums of one pixel (from ``bias`` on) from its three window columns g0..g2, the
    columns' weights w0..w2 (and the split form's s)."""
    acc = iw.dot4(iw.dot4(iw.dot4(bias, g0, w0), g1, w1), g2, w2)
    if split:
        acc = iw.dot4(iw.dot4(iw.dot4(acc, g0, s), g1, s), g2, s)
    return acc


@kernel(inline=True)
def _weights(wts, at, split):
    """A block's three column weights (and the split form's s vector) from byte ``at``."""
    w0, w1, w2 = iw.load_quads(wts, at), iw.load_quads(wts, at + GROUP), iw.load_quads(wts, at + 2 * GROUP)
    return w0, w1, w2, iw.load_quads(wts, at + 3 * GROUP) if split else w0


@kernel(inline=True)
def _column(x, zb, j, w_in, c, at, row_w, rows_in, ok0, ok1, ok2):
    """Window column j (an input column) of the rows whose first tap in column 0 is at byte ``at``:
    rows 0-2 in bytes 0-2 of each channel's lane; a tap in the padding (a row not ``ok``, a
    column outside the image) reads the zero point."""
    p = at + j * c
    if rows_in and j >= 0 and j < w_in:
        return iw.gather_taps(x, zb, p, p + row_w, p + 2 * row_w, p + 2 * row_w)
    inside = j >= 0 and j < w_in
    t0 = p if inside and ok0 else NEG
    t1 = p + row_w if inside and ok1 else NEG
    t2 = p + 2 * row_w if inside and ok2 else NEG
    return iw.gather_taps_checked(x, zb, t0, t1, t2, t2)


@kernel(inline=True)
def _rows(x, r0, r1, h, w_in, c, wts, zb, stride, top, left, out_h, out_w, params, scales, rounding, zero_point,
          lo, hi, out, split):
    """Output rows (image, row) r0..r1-1 of out [n, out_h, out_w, c] from x [n, h, w_in, c] (flat
    bytes).  For each block of 16 channels (its weights and requantization in registers), the
    row's pixels left to right, each from three window columns: at stride 1 one new column a
    pixel (the other two are the last pixel's), at stride 2 two.  A column inside the image on
    rows inside it is a plain gather; others read the padding as the zero point."""
    per_block = (4 if split else 3) * GROUP
    row_w = w_in * c
    for row in range(r0, r1):
        n = row // out_h
        iy = (row - n * out_h) * stride - top
        rows_in = iy >= 0 and iy + 3 <= h
        ok0, ok1, ok2 = iy >= 0 and iy < h, iy + 1 >= 0 and iy + 1 < h, iy + 2 >= 0 and iy + 2 < h
        at = (n * h + iy) * w_in * c                    # row iy, column 0 (maybe outside the image)
        o_row = row * out_w * c
        for c0 in range(0, c, 16):
            w0, w1, w2, sv = _weights(wts, c0 // 16 * per_block, split)
            q = iw.block_params(params, scales, c0)
            a = at + c0
            j = -left                                   # the pixel's first window column
            g0 = _column(x, zb, j, w_in, c, a, row_w, rows_in, ok0, ok1, ok2)
            g1 = _column(x, zb, j + 1, w_in, c, a, row_w, rows_in, ok0, ok1, ok2)
            for ox in range(out_w):
                g2 = _column(x, zb, j + 2, w_in, c, a, row_w, rows_in, ok0, ok1, ok2)
                acc = _sums(q[0], g0, g1, g2, w0, w1, w2, sv, split)
                iv.store_bytes(out, o_row + ox * c + c0, iw.requantized_block(acc, q, rounding, zero_point, lo, hi))
                j += stride
                if stride == 1:                         # each column serves three pixels
                    g0, g1 = g1, g2
                else:
                    g0 = g2 if stride == 2 else _column(x, zb, j, w_in, c, a, row_w, rows_in, ok0, ok1, ok2)
                    g1 = _column(x, zb, j + 1, w_in, c, a, row_w, rows_in, ok0, ok1, ok2)


@kernel()
def depthwise4_rows(x, r0, r1, h, w_in, c, wts, zb, k, stride, top, left, out_h, out_w, params, scales, rounding,
                    zero_point, lo, hi, out):
    """``integer_depthwise.depthwise_rows``' signature (``k`` is 3, ``zb`` = ``zero_bytes``): rows
    r0..r1-1, on ``pack_taps``' split form if ``wts`` holds its four vectors a block (a run-time
    flag: LLVM takes the branch out of the loops; a kernel per form compiled 1.4 s more, no faster)."""
    _rows(x, r0, r1, h, w_in, c, wts, zb, stride, top, left, out_h, out_w, params, scales, rounding, zero_point, lo,
          hi, out, wts.size * 2 == c // 16 * 4 * GROUP)


@kernel(parallel=True)
def depthwise4_parallel(x, rows, h, w_in, c, wts, zb, k, stride, top, left, out_h, out_w, params, scales, rounding,
                        zero_point, lo, hi, out, parts, rows_at):
    for part in prange(parts):
        call(rows_at, (x, part * rows // parts, (part + 1) * rows // parts, h, w_in, c, wts, zb, k, stride, top, left,
                       out_h, out_w, params, scales, rounding, zero_point, lo, hi, out))
