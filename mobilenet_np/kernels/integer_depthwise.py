"""The integer depthwise k x k convolution in Numba, with LiteRT's three requantizations.

Tested against ``integer_reference.depthwise_conv2d_accumulate`` and its requantizations.
The kernel reads the input bytes as they are (no centred or padded copy).  The input zero point
is folded out of the inner loop: sum_t (x_t - zp) w_t = sum_t x_t w_t - zp * sum_t w_t, so the
bias becomes bias - zp * sum_t w_t (``fold_zero_point``, once per graph), and a tap that
falls in the SAME padding (whose value is zp, which centres to nothing) adds zp * w_t instead of
a product (``zpw``, a table of k * k * C8 values).  The weights are centred at load
(``pack_depthwise``).  Each output pixel takes eight channels at a time (sixteen in the blocks
below where vectors are 512 bits wide, ``WIDE``): k * k widened
multiply-adds into one ``<8 x i32>`` sum (bytes times int16 weights: LLVM emits ``vpmaddwd``
with zero odd halves), requantized in registers (``integer_simd.requantized``) and stored as
bytes straight into the caller's array; a last group of fewer than eight channels is loaded
and stored lane by lane.  A 3 x 3 layer's interior pixels go in blocks of four adjacent ones
that share the weight vectors and the input columns they have in common: per pixel 4.5 input
(6.75 at stride 2) and 2.25 weight loads instead of 9 and 9 (the loads, each a widening
shuffle, bounded the one-pixel loop).  Output rows (image, row) are split over Numba's threads
(in one run on the calling thread for a small call, ``integer_calls.parts``): each thread calls
``depthwise_rows``, a real function (compiled once per input type; a small call runs it from
Python directly), and the rare paths (``_group_checked``, ``_pixel_checked``) are real functions too,
so the code is not inlined -- and compiled -- several times over.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import integer_depthwise4 as idw4
from . import integer_simd as iv
from . import integer_wide as iw
from .integer_calls import parts, remembered
from .integer_gemm import ROUNDINGS
from .jit import kernel
from .table import address_for, call

LANES = 8
# The blocks of four pixels take sixteen channels at a time where vectors are 512 bits wide (as the float
# kernels, simd.LANES), the rest eight: V2 0.5/96 int8's three largest depthwise layers at batch 1 went from
# 23-25 to 28-31 GMAC/s (int8_bench profiles, 2026-12-02; the layers read their input from memory).
WIDE = iw.WIDE_INT32
# A depthwise multiply-add costs ~3 of the GEMM's (V2 0.5/96 at batch 1: 7-9 GMAC/s against 20-30): its work
# counts 3x against ``integer_calls.SERIAL_BELOW`` (at 2^19, T=2, b1: V2 0.5/96 int8 1249 -> 1154 us and
# V1 0.5/160 uint8 3376 -> 3191 us against counting it 1x, A/B in one process).
SPLIT_WEIGHT = 3


def padded_channels(c: int) -> int:
    return -(-c // LANES) * LANES


def pack_depthwise(w: np.ndarray, zero_point) -> np.ndarray:
    """w [kh, kw, C, 1] -> (w - zero_point) int16 [kh, kw, C8], flat (followed by zeros up to nine
    taps when the kernel is smaller than 3 x 3: the 3 x 3 path indexes nine taps)."""
    kh, kw, c, _ = w.shape
    c8 = padded_channels(c)
    out = np.zeros(max(kh * kw, 9) * c8, np.int16)
    centred = w[:, :, :, 0].astype(np.int16) - np.asarray(zero_point, np.int16).reshape(-1)
    out.reshape(-1, c8)[:kh * kw, :c] = centred.reshape(kh * kw, c)
    return out


def fold_zero_point(packed: np.ndarray, params: np.ndarray, k: int, zero_point: int) -> tuple[np.ndarray, np.ndarray]:
    """(params with bias - zp * sum of the taps, zp * w per tap as int32 [k * k * C8]) for input zero point zp."""
    c8 = packed.size // max(k * k, 9)
    taps = packed[:k * k * c8].reshape(k * k, c8).astype(np.int64)
    folded = params.copy()
    folded[0, :c8] = (params[0, :c8].astype(np.int64) - zero_point * taps.sum(axis=0)).astype(np.int32)
    return folded, (zero_point * taps).astype(np.int32).reshape(-1)


@kernel(inline=True)
def _load_x(x, at, count):
    """Eight input channels from x[at] as int32 lanes; only ``count`` of them when fewer than 8 remain."""
    v = iv.zeros()
    if count >= 8:
        return iw.widen(x, at, v)
    for j in range(count):
        v = iv.insert(v, j, np.int64(x[at + j]))
    return v


@kernel()
def _pixel_checked(x, n, h, w_in, c, c8, wts, zpw, k, iy0, ix0, c0, count):
    """The sums of one output pixel's channels c0..c0+7 whose window starts at (iy0, ix0), taps
    outside the image adding zp * w, the channels loaded lane by lane when fewer than 8 remain."""
    acc = iv.zeros()
    for dy in range(k):
        iy = iy0 + dy
        for dx in range(k):
            ix = ix0 + dx
            t = (dy * k + dx) * c8 + c0
            if iy >= 0 and iy < h and ix >= 0 and ix < w_in:
                acc = iv.mul_add(acc, _load_x(x, ((n * h + iy) * w_in + ix) * c + c0, count), iw.widen(wts, t, acc))
            else:
                acc = iv.add(acc, iw.widen(zpw, t, acc))
    return acc


@kernel(inline=True)
def _padding_rows(s0, s1, s2, s3, zpw, r_lo, r_hi, c8, c0):
    """The block's sums plus zp * w for the window rows in the padding (above or below the image)."""
    for r in range(3):
        if r < r_lo or r >= r_hi:
            t = 3 * r * c8 + c0
            z = iv.add(iv.add(iw.widen(zpw, t, s0), iw.widen(zpw, t + c8, s0)), iw.widen(zpw, t + 2 * c8, s0))
            s0, s1, s2, s3 = iv.add(s0, z), iv.add(s1, z), iv.add(s2, z), iv.add(s3, z)
    return s0, s1, s2, s3


@kernel(inline=True)
def _four_s1(x, a, c, row_w, c8, wts, zpw, r_lo, r_hi, c0, z):
    """The sums of four adjacent output pixels at stride 1, channels c0.. (as many as ``z``, a zero
    vector of 8 or 16 lanes, has): the three weight vectors of a window row serve all four, and each
    of the row's six input columns is loaded once and used by every pixel it reaches."""
    s0, s1, s2, s3 = z, z, z, z
    for r in range(r_lo, r_hi):
        t = 3 * r * c8 + c0
        w0, w1, w2 = iw.widen(wts, t, z), iw.widen(wts, t + c8, z), iw.widen(wts, t + 2 * c8, z)
        at = a + c0 + r * row_w
        s0 = iv.mul_add(s0, iw.widen(x, at, z), w0)
        v = iw.widen(x, at + c, z)
        s0, s1 = iv.mul_add(s0, v, w1), iv.mul_add(s1, v, w0)
        v = iw.widen(x, at + 2 * c, z)
        s0, s1, s2 = iv.mul_add(s0, v, w2), iv.mul_add(s1, v, w1), iv.mul_add(s2, v, w0)
        v = iw.widen(x, at + 3 * c, z)
        s1, s2, s3 = iv.mul_add(s1, v, w2), iv.mul_add(s2, v, w1), iv.mul_add(s3, v, w0)
        v = iw.widen(x, at + 4 * c, z)
        s2, s3 = iv.mul_add(s2, v, w2), iv.mul_add(s3, v, w1)
        s3 = iv.mul_add(s3, iw.widen(x, at + 5 * c, z), w2)
    return _padding_rows(s0, s1, s2, s3, zpw, r_lo, r_hi, c8, c0)


@kernel(inline=True)
def _four_s2(x, a, c, row_w, c8, wts, zpw, r_lo, r_hi, c0, z):
    """As ``_four_s1`` at stride 2: nine input columns a row, an even one shared by two pixels."""
    s0, s1, s2, s3 = z, z, z, z
    for r in range(r_lo, r_hi):
        t = 3 * r * c8 + c0
        w0, w1, w2 = iw.widen(wts, t, z), iw.widen(wts, t + c8, z), iw.widen(wts, t + 2 * c8, z)
        at = a + c0 + r * row_w
        s0 = iv.mul_add(s0, iw.widen(x, at, z), w0)
        s0 = iv.mul_add(s0, iw.widen(x, at + c, z), w1)
        v = iw.widen(x, at + 2 * c, z)
        s0, s1 = iv.mul_add(s0, v, w2), iv.mul_add(s1, v, w0)
        s1 = iv.mul_add(s1, iw.widen(x, at + 3 * c, z), w1)
        v = iw.widen(x, at + 4 * c, z)
        s1, s2 = iv.mul_add(s1, v, w2), iv.mul_add(s2, v, w0)
        s2 = iv.mul_add(s2, iw.widen(x, at + 5 * c, z), w1)
        v = iw.widen(x, at + 6 * c, z)
        s2, s3 = iv.mul_add(s2, v, w2), iv.mul_add(s3, v, w0)
        s3 = iv.mul_add(s3, iw.widen(x, at + 7 * c, z), w1)
        s3 = iv.mul_add(s3, iw.widen(x, at + 8 * c, z), w2)
    return _padding_rows(s0, s1, s2, s3, zpw, r_lo, r_hi, c8, c0)


@kernel(inline=True)
def _store4(s0, s1, s2, s3, params, scales, rounding, c0, zero_point, lo, hi, out, o_at, c):
    """The four pixels' sums requantized and stored at out[o_at + p * c ...]."""
    iv.store_bytes(out, o_at, iv.requantized(s0, params, scales, rounding, c0, zero_point, lo, hi))
    iv.store_bytes(out, o_at + c, iv.requantized(s1, params, scales, rounding, c0, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 2 * c, iv.requantized(s2, params, scales, rounding, c0, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 3 * c, iv.requantized(s3, params, scales, rounding, c0, zero_point, lo, hi))


@kernel()
def depthwise_rows(x, r0, r1, h, w_in, c, wts, zpw, k, stride, top, left, out_h, out_w, params, scales, rounding,
          zero_point, lo, hi, out):
    """Output rows (image, row) r0..r1-1 of out [n, out_h, out_w, c] (flat bytes) from x [n, h, w_in, c] (flat bytes), SAME/VALID
    padding given by ``top``/``left``; ``wts`` centred [k, k, C8], ``zpw`` = zp * wts, ``params``
    with the folded bias.  A 3 x 3 row's interior columns (window inside the image's width) run
    in blocks of four output pixels at stride 1 and 2, one at a time at other strides or when
    the interior is narrower than a block; the last block is moved back to end at the last
    interior column (it recomputes a few pixels rather than taking a path of its own).  In a
    block the three weight vectors of a window row serve all four pixels, and each input column
    of the row (6 at stride 1, 9 at stride 2) is loaded once and used by every pixel it reaches.
    The border columns run one pixel at a time, its first or last input column maybe in the
    padding.  Window rows above or below the image add zp * w in the blocks themselves.  Eight
    channels at a time, block outermost (memory in order: keeping the nine weight vectors in
    registers over a whole row instead, channel group outermost, measured 3x slower at batch 32
    -- the strided walk defeats the prefetcher).  Padding wider than one column, the channel
    tail and other kernel sizes take the checked path (``_group_checked``).

    Measured choices: each block size has its own loop over the channel groups (one loop with a
    branch on the size per group: 10-40% slower on the narrow maps); the blocks' window rows
    are a loop with a run-time count, which LLVM does not unroll (three unrolled rows with a
    branch each compiled ~0.2 s longer per input type, no faster); the blocks are inlined
    helpers (``_four_s1``, ``_four_s2``), each called at two widths (sixteen channels, then
    eight; the block bodies written out at both widths repeated 50 lines); requantization in a
    loop over the block's pixels (one per pixel in the code compiled longer, no faster); blocks
    of two at stride 2 instead of four: 15-20% slower on the large stride-2 layers, ~10% faster
    on the 6 x 6 and 12 x 12 maps.  Cost: the cold compile of
    ``depthwise_rows`` (both input types, with its helpers) went from ~2.3 to ~4 s."""
    c8 = (c + 7) // 8 * 8
    full = c // 8 * 8                                   # channels in whole groups of eight
    row_w = w_in * c
    block = 4 if stride <= 2 else 1
    for row in range(r0, r1):
        n = row // out_h
        oy = row - n * out_h
        iy0 = oy * stride - top
        r_lo, r_hi = max(-iy0, 0), min(h - iy0, 3)     # the window rows inside the image
        ox_lo, ox_hi = out_w, out_w                     # the output columns whose window is inside
        if k == 3:
            ox_lo = min((left + stride - 1) // stride, out_w)
            ox_hi = max(min((w_in - 3 + left) // stride + 1, out_w), ox_lo)
        inner = block if ox_hi - ox_lo >= block else 1
        blocks = (ox_hi - ox_lo + inner - 1) // inner
        for b in range(out_w - ox_hi + ox_lo + blocks if k == 3 else 0):
            if b < ox_lo:                               # a border column on the left
                ox, step = b, 1
            elif b < ox_lo + blocks:                    # the interior, in blocks
                ox, step = min(ox_lo + (b - ox_lo) * inner, ox_hi - inner), inner
            else:                                       # a border column on the right
                ox, step = ox_hi + b - ox_lo - blocks, 1
            ix0 = ox * stride - left
            span = (step - 1) * stride + 3              # input columns under the block
            o_row = (row * out_w + ox) * c
            wide = ix0 + 1 < 0 or ix0 + span - 2 >= w_in     # padding wider than a column
            done = 0 if wide else full                  # channels done here; the rest checked
            done16 = done // 16 * 16 if WIDE else 0     # of them, in groups of sixteen (blocks only)
            first_ok, last_ok = ix0 >= 0, ix0 + span <= w_in
            a = ((n * h + iy0) * w_in + ix0) * c
            if step == 4 and stride == 1:               # four pixels, six input columns a row
                for c0 in range(0, done16, 16):         # sixteen channels at a time, then eight
                    s0, s1, s2, s3 = _four_s1(x, a, c, row_w, c8, wts, zpw, r_lo, r_hi, c0, iw.zeros16())
                    _store4(s0, s1, s2, s3, params, scales, rounding, c0, zero_point, lo, hi, out, o_row + c0, c)
                for c0 in range(done16, done, 8):
                    s0, s1, s2, s3 = _four_s1(x, a, c, row_w, c8, wts, zpw, r_lo, r_hi, c0, iv.zeros())
                    _store4(s0, s1, s2, s3, params, scales, rounding, c0, zero_point, lo, hi, out, o_row + c0, c)
            elif step == 4:                             # stride 2: nine input columns a row
                for c0 in range(0, done16, 16):
                    s0, s1, s2, s3 = _four_s2(x, a, c, row_w, c8, wts, zpw, r_lo, r_hi, c0, iw.zeros16())
                    _store4(s0, s1, s2, s3, params, scales, rounding, c0, zero_point, lo, hi, out, o_row + c0, c)
                for c0 in range(done16, done, 8):
                    s0, s1, s2, s3 = _four_s2(x, a, c, row_w, c8, wts, zpw, r_lo, r_hi, c0, iv.zeros())
                    _store4(s0, s1, s2, s3, params, scales, rounding, c0, zero_point, lo, hi, out, o_row + c0, c)
            else:                                       # one pixel (the rows unrolled: faster here)
                for c0 in range(0, done, 8):
                    s0 = iv.zeros()
                    for r in range(3):
                        t = 3 * r * c8 + c0
                        if r >= r_lo and r < r_hi:
                            at = a + c0 + r * row_w
                            if first_ok:
                                s0 = iv.mul_add(s0, iw.widen(x, at, s0), iw.widen(wts, t, s0))
                            else:
                                s0 = iv.add(s0, iw.widen(zpw, t, s0))
                            s0 = iv.mul_add(s0, iw.widen(x, at + c, s0), iw.widen(wts, t + c8, s0))
                            if last_ok:
                                s0 = iv.mul_add(s0, iw.widen(x, at + 2 * c, s0), iw.widen(wts, t + 2 * c8, s0))
                            else:
                                s0 = iv.add(s0, iw.widen(zpw, t + 2 * c8, s0))
                        else:                           # a window row in the padding
                            s0 = iv.add(s0, iv.add(iv.add(iw.widen(zpw, t, s0), iw.widen(zpw, t + c8, s0)),
                                                   iw.widen(zpw, t + 2 * c8, s0)))
                    iv.store_bytes(out, o_row + c0, iv.requantized(s0, params, scales, rounding, c0, zero_point,
                                                                   lo, hi))
            for p in range(step):
                for c0 in range(done, c, 8):
                    _group_checked(x, n, h, w_in, c, c8, wts, zpw, k, iy0, ix0 + p * stride, c0, params, scales,
                                   rounding, zero_point, lo, hi, out, o_row + p * c)
        for ox in range(out_w if k != 3 else 0):
            for c0 in range(0, c, 8):
                _group_checked(x, n, h, w_in, c, c8, wts, zpw, k, iy0, ox * stride - left, c0, params, scales,
                               rounding, zero_point, lo, hi, out, (row * out_w + ox) * c)


@kernel()
def _group_checked(x, n, h, w_in, c, c8, wts, zpw, k, iy0, ix0, c0, params, scales, rounding, zero_point, lo, hi, out,
                   o_row):
    """Channels c0.. c0+7 (or up to the last) of one pixel, every tap checked, stored lane by lane:
    the channel tail, other kernel sizes, pixels near padding wider than a column."""
    count = min(c - c0, 8)
    acc = _pixel_checked(x, n, h, w_in, c, c8, wts, zpw, k, iy0, ix0, c0, count)
    r = iv.requantized(acc, params, scales, rounding, c0, zero_point, lo, hi)
    for j in range(count):
        out[o_row + c0 + j] = iv.extract(r, j)


@kernel(parallel=True)
def depthwise_parallel(x, rows, h, w_in, c, wts, zpw, k, stride, top, left, out_h, out_w, params, scales, rounding,
                       zero_point, lo, hi, out, parts, rows_at):
    for part in prange(parts):
        call(rows_at, (x, part * rows // parts, (part + 1) * rows // parts, h, w_in, c, wts, zpw, k, stride, top, left,
                       out_h, out_w, params, scales, rounding, zero_point, lo, hi, out))


class Depthwise:
    """``depthwise_conv2d`` bound to its shapes and weights (the fast graph keeps one per op and
    input shape): the folded zero point, the kernel (``integer_depthwise4``'s four-byte dot
    products where the input's ``dtype`` is uint8 and ``idw4.usable``, else ``depthwise_rows``),
    the thread count (``integer_calls.parts``, decided now), the scalar arguments; the call's
    argument tuple (flat views, a split call's row code address) is kept while the same arrays
    come back (as ``integer_gemm.Gemm``).  One thread at a time."""

    def __init__(self, x_shape, x_zero_point, packed, k, stride, pad, out_hw, params, out_zero_point, clamp,
                 rounding="reference", scales=None, folded=None, dtype=None):
        n, h, w, c = x_shape
        params, zpw = folded if folded is not None else fold_zero_point(packed, params, k, x_zero_point)
        scales = np.zeros(params.shape[1], np.float32) if scales is None else scales
        self.rows = n * out_hw[0]
        weights, self.rows_kernel, self.parallel = packed, depthwise_rows, depthwise_parallel
        quads = idw4.pack_taps(packed, c) if dtype == np.uint8 and idw4.usable(k, c) else None
        if quads is not None:
            weights, zpw = quads[0], idw4.zero_bytes(x_zero_point)
            self.rows_kernel = idw4.depthwise4_rows
            self.parallel = idw4.depthwise4_parallel
        self.parts = parts(self.rows * out_hw[1] * c * k * k * SPLIT_WEIGHT)
        self.args = (h, w, c, weights, zpw, k, stride, pad[0], pad[2], out_hw[0], out_hw[1], params, scales,
                     ROUNDINGS[rounding], out_zero_point, clamp[0], clamp[1])
        self.kernel = self.rows_kernel if self.parts == 1 else self.parallel
        self.seen = (None, None)

    def __call__(self, x, out):
        """x [N, H, W, C] (uint8/int8) -> out, C-contiguous [N, OH, OW, C] of the output type."""
        if x is not self.seen[0] or out is not self.seen[1]:
            self.seen, self.call = remembered(x, out), self._arguments(x, out)
        self.kernel(*self.call)
        return out

    def calls(self, x, out):
        """``__call__(x, out)`` as [(compiled function, arguments)] for a caller that passes these same
        arrays every time (``integer_gemm.Gemm.calls``); None if x is not C-contiguous."""
        return [(self.kernel, self._arguments(x, out))] if x.flags.c_contiguous else None

    def _arguments(self, x, out):
        flat, into = np.ascontiguousarray(x).reshape(-1), out.reshape(-1)
        call = (flat, 0, self.rows, *self.args, into)
        if self.parts > 1:      # depthwise_rows called at its address: not compiled again inside (table.py)
            call = (flat, self.rows, *self.args, into, self.parts, address_for(self.rows_kernel, call))
        return call


def depthwise_conv2d(x, x_zero_point, packed, k, stride, pad, out_hw, params, out_zero_point, clamp, out,
                     rounding: str = "reference", scales=None, folded=None):
    """Depthwise k x k convolution (multiplier 1): x [N, H, W, C] -> out [N, OH, OW, C] (C-contiguous)
    of the output type, ``packed = pack_depthwise(w, w_zero_point)``, ``params`` and ``scales`` as for
    ``integer_gemm.pointwise_conv2d`` (padded to at least a multiple of 8 channels); ``folded``:
    ``fold_zero_point(packed, params, k, x_zero_point)`` if the caller keeps it (``Depthwise``)."""
    return Depthwise(x.shape, x_zero_point, packed, k, stride, pad, out_hw, params, out_zero_point, clamp, rounding,
                     scales, folded, x.dtype)(x, out)
