"""The integer 3 x 3 depthwise convolution on four-byte dot products (AVX-512 VNNI's ``vpdpbusd``).

``integer_depthwise`` widens each tap's bytes to int32 lanes and multiplies them by int16
weights (``vpmaddwd`` with zero odd halves: one multiply-add per lane and instruction, plus an
add).  Here the nine taps of an output pixel go four to a lane: ``gather_taps`` loads the 16
channels' bytes of four taps and transposes them (byte j of lane c: tap j of channel c), and
one ``dot4`` multiplies and adds all four, so a pixel's sixteen channels take three ``dot4``
(taps 0-3, 4-7 and the ninth alone, ``one_tap``) where the widening kernel takes nine
multiply-adds, nine adds and nine widening shuffles.  Taps are in row-major order, t = 3 dy + dx.

* The input bytes are used as they are (uint8: the fast graph holds int8 activations as uint8 +
  128), the input zero point folded into the bias as ``integer_depthwise.fold_zero_point`` does
  (the same ``params``).  A tap in the SAME padding reads sixteen bytes of the zero point
  (``gather_taps_checked``: the tap then adds zp * w, which the folded bias takes away).
* The weights, centred on their zero point, are signed bytes.  When a channel's nine centred
  weights span more than int8 (uint8 models: w - zp lies in [-255, 255]), each is split into
  (w - zp - s) + s with s chosen per channel so that both are int8 (``pack_taps``: possible
  whenever the nine span at most 255, as bytes on one zero point always do); the kernel then
  adds each tap group's products with s too (six ``dot4`` a pixel: exact int32 sums, the same
  bytes).
* Sixteen channels at a time: used where C is a multiple of 16 (``Depthwise`` keeps the
  widening kernel otherwise, and for other kernel sizes).  Output rows (image, row) split over
  threads as ``integer_depthwise`` does, with the same signature (the program's rows,
  ``integer_program``, call either).

Tested against ``integer_reference`` through ``integer_depthwise.depthwise_conv2d``'s results.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import integer_simd as iv
from . import integer_wide as iw
from .jit import kernel
from .table import call

GROUP = 64          # bytes of one tap group: 16 channels x 4 taps
NEG = -(1 << 60)    # a tap offset in the padding (stays negative when a channel offset is added)


def usable(k: int, c: int) -> bool:
    """Whether a k x k layer of C channels should run here: 3 x 3, C a multiple of 16, and
    ``dot4`` the VNNI instruction (its portable IR is slower than the widening kernel)."""
    return iw.DOT4_VNNI and k == 3 and c % 16 == 0


def pack_taps(packed: np.ndarray, c: int):
    """``integer_depthwise.pack_depthwise``'s centred int16 taps [9, C8] (3 x 3) -> (int8 groups,
    flat, viewed as int16; True if split) or None (a channel's weights span more than 255).
    Per block of 16 channels: taps 0-3 [16, 4], taps 4-7, tap 8 [16, 1 + 3 zeros]; split, then
    the per-channel s in every tap of a group of four, and in the ninth's byte 0."""
    c8 = packed.size // 9
    taps = packed[:9 * c8].reshape(9, c8)[:, :c].astype(np.int32)
    lo, hi = taps.min(axis=0), taps.max(axis=0)
    s = np.maximum(hi - 127, 0) + np.minimum(lo + 128, 0)     # taps - s in [-128, 127] if hi - lo <= 255
    if np.any(hi - lo > 255) or np.any(s > 127):
        return None
    split = bool(np.any(s != 0))
    groups = np.zeros((c // 16, 5 if split else 3, 16, 4), np.int8)
    centred = (taps - s).T.reshape(c // 16, 16, 9)
    groups[:, 0] = centred[:, :, 0:4]
    groups[:, 1] = centred[:, :, 4:8]
    groups[:, 2, :, 0] = centred[:, :, 8]
    if split:
        by_block = np.asarray(s).reshape(c // 16, 16)
        groups[:, 3] = by_block[:, :, None]
        groups[:, 4, :, 0] = by_block
    return groups.reshape(-1).view(np.int16), split


def zero_bytes(zero_point: int) -> np.ndarray:
    """Sixteen bytes of the input zero point (int32 [4], as the kernels' ``zpw`` argument)."""
    return np.full(16, zero_point, np.uint8).view(np.int32)


@kernel(inline=True)
def _sums(bias, g0, g1, g2, w0, w1, w2, s0, s1, split):
    """The sixteen sums of one pixel (from ``bias`` on) from its three tap groups, the weights
    w0..w2 (and the split form's s0, s1)."""
    acc = iw.dot4(iw.dot4(iw.dot4(bias, g0, w0), g1, w1), g2, w2)
    if split:
        acc = iw.dot4(iw.dot4(iw.dot4(acc, g0, s0), g1, s0), g2, s1)
    return acc


@kernel(inline=True)
def _weights(wts, at, split):
    """A block's three weight groups (and the split form's two s vectors) from byte ``at``."""
    w0, w1, w2 = iw.load_quads(wts, at), iw.load_quads(wts, at + GROUP), iw.load_quads(wts, at + 2 * GROUP)
    if split:
        return w0, w1, w2, iw.load_quads(wts, at + 3 * GROUP), iw.load_quads(wts, at + 4 * GROUP)
    return w0, w1, w2, w0, w0


@kernel(inline=True)
def _pixel(x, zb, p, c, row_w, bias, w0, w1, w2, s0, s1, split):
    """The sums of the pixel whose window lies inside the image and starts at byte p."""
    g0 = iw.gather_taps(x, zb, p, p + c, p + 2 * c, p + row_w)
    g1 = iw.gather_taps(x, zb, p + row_w + c, p + row_w + 2 * c, p + 2 * row_w, p + 2 * row_w + c)
    return _sums(bias, g0, g1, iw.one_tap(x, zb, p + 2 * row_w + 2 * c), w0, w1, w2, s0, s1, split)


@kernel(inline=True)
def _offset(a, iy, ix, dy, dx, h, w_in, row_w, c):
    """The byte offset of tap (dy, dx) of a window at (iy, ix) whose first tap is at ``a``, or NEG."""
    if iy + dy >= 0 and iy + dy < h and ix + dx >= 0 and ix + dx < w_in:
        return a + dy * row_w + dx * c
    return NEG


@kernel(inline=True)
def _rows(x, r0, r1, h, w_in, c, wts, zb, stride, top, left, out_h, out_w, params, scales, rounding, zero_point,
          lo, hi, out, split):
    """Output rows (image, row) r0..r1-1 of out [n, out_h, out_w, c] from x [n, h, w_in, c] (flat
    bytes).  A pixel whose window lies inside the image loads its taps directly; one whose window
    reaches into the padding computes its nine offsets once (NEG in the padding) and reads them
    with the checked gathers."""
    per_block = (5 if split else 3) * GROUP
    row_w = w_in * c
    step = stride * c
    for row in range(r0, r1):
        n = row // out_h
        iy = (row - n * out_h) * stride - top
        ox_lo, ox_hi = out_w, out_w                     # the output columns whose window is inside
        if iy >= 0 and iy + 3 <= h:
            ox_lo = min((left + stride - 1) // stride, out_w)
            ox_hi = max(min((w_in - 3 + left) // stride + 1, out_w), ox_lo)
        a_row = ((n * h + iy) * w_in - left) * c        # the first tap of output column 0
        o_row = row * out_w * c
        for c0 in range(0, c if ox_hi > ox_lo else 0, 16):     # the interior: a block's weights in registers
            w0, w1, w2, s0, s1 = _weights(wts, c0 // 16 * per_block, split)
            q = iw.block_params(params, scales, c0)             # and its requantization
            for ox in range(ox_lo, ox_hi):
                acc = _pixel(x, zb, a_row + ox * step + c0, c, row_w, q[0], w0, w1, w2, s0, s1, split)
                iv.store_bytes(out, o_row + ox * c + c0, iw.requantized_block(acc, q, rounding, zero_point, lo, hi))
        for b in range(out_w - ox_hi + ox_lo):          # the border columns, one pixel at a time
            ox = b if b < ox_lo else ox_hi + b - ox_lo
            ix = ox * stride - left
            a = a_row + ox * step
            t0 = _offset(a, iy, ix, 0, 0, h, w_in, row_w, c)
            t1 = _offset(a, iy, ix, 0, 1, h, w_in, row_w, c)
            t2 = _offset(a, iy, ix, 0, 2, h, w_in, row_w, c)
            t3 = _offset(a, iy, ix, 1, 0, h, w_in, row_w, c)
            t4 = _offset(a, iy, ix, 1, 1, h, w_in, row_w, c)
            t5 = _offset(a, iy, ix, 1, 2, h, w_in, row_w, c)
            t6 = _offset(a, iy, ix, 2, 0, h, w_in, row_w, c)
            t7 = _offset(a, iy, ix, 2, 1, h, w_in, row_w, c)
            t8 = _offset(a, iy, ix, 2, 2, h, w_in, row_w, c)
            for c0 in range(0, c, 16):
                w0, w1, w2, s0, s1 = _weights(wts, c0 // 16 * per_block, split)
                g0 = iw.gather_taps_checked(x, zb, t0 + c0, t1 + c0, t2 + c0, t3 + c0)
                g1 = iw.gather_taps_checked(x, zb, t4 + c0, t5 + c0, t6 + c0, t7 + c0)
                q = iw.block_params(params, scales, c0)
                acc = _sums(q[0], g0, g1, iw.one_tap_checked(x, zb, t8 + c0), w0, w1, w2, s0, s1, split)
                iv.store_bytes(out, o_row + ox * c + c0, iw.requantized_block(acc, q, rounding, zero_point, lo, hi))


@kernel()
def depthwise4_rows(x, r0, r1, h, w_in, c, wts, zb, k, stride, top, left, out_h, out_w, params, scales, rounding,
                    zero_point, lo, hi, out):
    """``integer_depthwise.depthwise_rows``' signature (``k`` is 3, ``zb`` = ``zero_bytes``):
    rows r0..r1-1 on ``pack_taps``' first form."""
    _rows(x, r0, r1, h, w_in, c, wts, zb, stride, top, left, out_h, out_w, params, scales, rounding, zero_point, lo,
          hi, out, False)


@kernel()
def depthwise4_split_rows(x, r0, r1, h, w_in, c, wts, zb, k, stride, top, left, out_h, out_w, params, scales,
                          rounding, zero_point, lo, hi, out):
    """As ``depthwise4_rows``, on ``pack_taps``' split form."""
    _rows(x, r0, r1, h, w_in, c, wts, zb, stride, top, left, out_h, out_w, params, scales, rounding, zero_point, lo,
          hi, out, True)


@kernel(parallel=True)
def depthwise4_parallel(x, rows, h, w_in, c, wts, zb, k, stride, top, left, out_h, out_w, params, scales, rounding,
                        zero_point, lo, hi, out, parts, rows_at):
    for part in prange(parts):
        call(rows_at, (x, part * rows // parts, (part + 1) * rows // parts, h, w_in, c, wts, zb, k, stride, top, left,
                       out_h, out_w, params, scales, rounding, zero_point, lo, hi, out))
