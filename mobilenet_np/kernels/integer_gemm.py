"""The integer 1x1 convolution in Numba: int16 pairs into int32 sums, then TFLite's requantization.

A first fast integer kernel (issue 17), tested against ``integer_reference`` (conv sums, then
``requantize``).  The work is a matrix product [pixels, C_in] x [C_in, C_out] on centred values:

* the input is centred once, (q - zero_point) as int16, with C_in padded to an even count
  (``centre``); the weights are centred and packed at load time (``pack_pairs``) so that
  for each pair of input channels (k, k+1) the 16 output channels of a panel read 32 contiguous
  int16 values: (w[k, c], w[k+1, c]) for c = 0..7, then for c = 8..15;
* a tile of 4 pixels x 16 channels keeps eight ``<8 x i32>`` sums in registers; each step
  broadcasts a pixel's (x[k], x[k+1]) pair and does ``madd`` (``vpmaddwd`` on AVX2: 16
  multiply-adds per instruction) against the two weight vectors;
* when a tile's sums are complete, ``integer_simd.requantized`` adds the bias and applies
  TFLite's double-rounding fixed-point multiply (per-channel multiplier and shifts, eight
  lanes at a time), the zero point and the clamp, and the bytes are stored: the int32 sums
  never go through memory.

What compiles, and how often (a cold compile of every integer kernel took 125 s; now ~11 s):
the requantization is one intrinsic, not a Numba function inlined at each of its dozen call
sites (Numba's IR inlining re-runs its front end per site: that was most of the time); the
tile loops are inlined once, into ``gemm_tasks``, a real function that the parallel kernel calls
once per thread and Python calls directly for one thread (no serial copy of the code); int8
and uint8 outputs are stored through one uint8 view (one compile for both; the fast graph
runs int8 activations as uint8 + 128, so it compiles only the uint8 forms).  The prange
kernels call the task code at its address (``table.py``) rather than linking it in, where
Numba's parallel lowering re-optimized it, ~1.5-2 s per signature (19 -> 15 s in all).  The centring runs on one thread
rather than having a prange twin.  Full k x k convolutions (the stem) are in ``integer_conv.py``.

int16 holds every centred value: uint8 - zero point and int8 - zero point lie in [-255, 255],
and a pair of products (at most 2 * 255^2) plus the sums over C_in fit int32 for any C_in below
16,000.  A C_out that is not whole panels of 16 is written padded, then copied to the caller's
array.  ``Gemm`` and ``Pointwise`` bind a call's shapes once (the fast graph's steps); the
thread split and the memory they share are in ``integer_calls.py``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import integer_simd as iv
from .integer_calls import Scratch, contiguous, parts, remembered
from .jit import kernel
from .table import address_for, call

PANEL = 16            # output channels per tile: two vectors of 8 int32 sums


def pack_pairs(w: np.ndarray, zero_point) -> np.ndarray:
    """w [C_in, C_out] uint8/int8 and its zero point(s) -> centred int16 panels, flat:
    [panel, channel pair q, half (channels 0-7 / 8-15), channel c, tap k = 2q or 2q+1]."""
    c_in, c_out = w.shape
    panels, pairs = -(-c_out // PANEL), -(-c_in // 2)
    centred = np.zeros((2 * pairs, panels * PANEL), np.int16)
    centred[:c_in, :c_out] = w.astype(np.int16) - np.asarray(zero_point, np.int16).reshape(-1)
    # [q, k-in-pair, panel, half, c] -> [panel, q, half, c, k-in-pair]
    blocks = centred.reshape(pairs, 2, panels, 2, PANEL // 2).transpose(2, 0, 3, 4, 1)
    return np.ascontiguousarray(blocks).reshape(-1)


# How sums become output bytes (see forward/quantized.py and ``integer_simd.requantized``).
REFERENCE, OPTIMIZED, XNNPACK = iv.REFERENCE, iv.OPTIMIZED, iv.XNNPACK
ROUNDINGS = {"reference": REFERENCE, "optimized": OPTIMIZED, "xnnpack": XNNPACK}


@kernel(inline=True)
def _tile4(x, x_at, kp, w, w_at, params, scales, rounding, c, zero_point, lo, hi, out, o_at, row):
    """4 pixels (input rows x_at, x_at + kp, ...) x 16 channels from c: eight int32 sums kept
    in registers over C_in, then requantized into out[o_at + r * row + 0..15]."""
    a0 = iv.zeros()
    b0 = iv.zeros()
    a1 = iv.zeros()
    b1 = iv.zeros()
    a2 = iv.zeros()
    b2 = iv.zeros()
    a3 = iv.zeros()
    b3 = iv.zeros()
    for q in range(kp // 2):
        wa = iv.load_pairs(w, w_at + 32 * q)
        wb = iv.load_pairs(w, w_at + 32 * q + 16)
        p = iv.splat_pair(x, x_at + 2 * q)
        a0 = iv.madd(a0, p, wa)
        b0 = iv.madd(b0, p, wb)
        p = iv.splat_pair(x, x_at + kp + 2 * q)
        a1 = iv.madd(a1, p, wa)
        b1 = iv.madd(b1, p, wb)
        p = iv.splat_pair(x, x_at + 2 * kp + 2 * q)
        a2 = iv.madd(a2, p, wa)
        b2 = iv.madd(b2, p, wb)
        p = iv.splat_pair(x, x_at + 3 * kp + 2 * q)
        a3 = iv.madd(a3, p, wa)
        b3 = iv.madd(b3, p, wb)
    iv.store_bytes(out, o_at, iv.requantized(a0, params, scales, rounding, c, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 8, iv.requantized(b0, params, scales, rounding, c + 8, zero_point, lo, hi))
    iv.store_bytes(out, o_at + row, iv.requantized(a1, params, scales, rounding, c, zero_point, lo, hi))
    iv.store_bytes(out, o_at + row + 8, iv.requantized(b1, params, scales, rounding, c + 8, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 2 * row, iv.requantized(a2, params, scales, rounding, c, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 2 * row + 8, iv.requantized(b2, params, scales, rounding, c + 8, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 3 * row, iv.requantized(a3, params, scales, rounding, c, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 3 * row + 8, iv.requantized(b3, params, scales, rounding, c + 8, zero_point, lo, hi))


@kernel(inline=True)
def _tile1(x, x_at, kp, w, w_at, params, scales, rounding, c, zero_point, lo, hi, out, o_at):
    """One pixel x 16 channels (the pixels left over after the 4-pixel tiles)."""
    a = iv.zeros()
    b = iv.zeros()
    for q in range(kp // 2):
        p = iv.splat_pair(x, x_at + 2 * q)
        a = iv.madd(a, p, iv.load_pairs(w, w_at + 32 * q))
        b = iv.madd(b, p, iv.load_pairs(w, w_at + 32 * q + 16))
    iv.store_bytes(out, o_at, iv.requantized(a, params, scales, rounding, c, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 8, iv.requantized(b, params, scales, rounding, c + 8, zero_point, lo, hi))


@kernel()
def centre_rows(x, p0, p1, c_in, zero_point, kp, out):
    """out [pixels, kp] int16 = x [pixels, C_in] - zero_point (flat arrays) for pixels p0..p1-1;
    an odd C_in's extra column is left as it is (the packed weights are zero there)."""
    for p in range(p0, p1):
        src, dst = p * c_in, p * kp
        k = 0
        while k + 16 <= c_in:
            iv.centre16(x, src + k, zero_point, out, dst + k)
            k += 16
        while k < c_in:
            out[dst + k] = np.int16(x[src + k]) - zero_point
            k += 1


CHUNK = 32            # pixels per GEMM task


@kernel()
def gemm_tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out):
    """out [pixels, panels * 16] (bytes, flat) = requantized (centred x [pixels, kp] times the
    panels), for tasks t0..t1-1: task t is (up to 32 pixels) x (one panel), the chunk outermost."""
    row = panels * PANEL
    for task in range(t0, t1):
        ch = task // panels
        g = task - ch * panels
        w_at = g * (kp // 2) * 32
        c = g * PANEL
        p = ch * CHUNK
        end = min(p + CHUNK, pixels)
        while p + 4 <= end:
            _tile4(x, p * kp, kp, w, w_at, params, scales, rounding, c, zero_point, lo, hi, out, p * row + c, row)
            p += 4
        while p < end:
            _tile1(x, p * kp, kp, w, w_at, params, scales, rounding, c, zero_point, lo, hi, out, p * row + c)
            p += 1


@kernel(parallel=True)
def gemm_parallel(x, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out, parts, tasks_at):
    """``gemm_tasks`` split over ``parts`` threads, called at ``tasks_at`` (``table.address_for``):
    not linked in, so its code is not compiled again here (``table.py``).  Each part takes an equal range of
    the tasks, or, for a few chunks of pixels that do not divide among the parts, its share of the panels in
    every chunk (6 x 6: 32 + 4 pixels, one part had 8x the other's work and the split ran slower)."""
    chunks = (pixels + CHUNK - 1) // CHUNK
    tasks = chunks * panels
    for part in prange(parts):
        if chunks % parts == 0 or chunks >= 8 * parts:
            call(tasks_at, (x, part * tasks // parts, (part + 1) * tasks // parts, pixels, kp, w, panels, params,
                            scales, rounding, zero_point, lo, hi, out))
        else:
            g0 = part * panels // parts
            g1 = (part + 1) * panels // parts
            for ch in range(chunks):
                call(tasks_at, (x, ch * panels + g0, ch * panels + g1, pixels, kp, w, panels, params, scales,
                                rounding, zero_point, lo, hi, out))


def requantization_params(bias, multiplier, shift, c_out: int) -> np.ndarray:
    """[4, panels * 16] int32: bias, multiplier, left shift, right shift per output channel
    (zero-padded: the padded channels compute garbage that is never read)."""
    params = np.zeros((4, -(-c_out // PANEL) * PANEL), np.int32)
    shift = np.broadcast_to(np.asarray(shift, np.int64), (c_out,))
    params[0, :c_out] = bias
    params[1, :c_out] = np.broadcast_to(np.asarray(multiplier, np.int64), (c_out,))
    params[2, :c_out] = np.maximum(shift, 0)
    params[3, :c_out] = np.maximum(-shift, 0)
    return params


def xnnpack_scales(scales, c_out: int) -> np.ndarray:
    """XNNPACK's float32 scale per channel (``integer_xnnpack.conv_scales``), padded to whole panels."""
    out = np.zeros(-(-c_out // PANEL) * PANEL, np.float32)
    out[:c_out] = np.broadcast_to(np.asarray(scales, np.float32), (c_out,))
    return out


# Widening the input pair in every broadcast costs more than one centring pass once C_in is large:
# measured (T=1, CPU time, V1's 1x1 shapes at batch 32) bytes 26 / 32 / 36 GMAC/s against centred
# 20 / 31 / 33 at C_in 16 / 32 / 64, and 39 / 41 / 41 against 45 / 52 / 59 at C_in 128 / 256 / 512.
BYTES_BELOW = 128


def fold_zero_point(packed: np.ndarray, params: np.ndarray, zero_point: int) -> np.ndarray:
    """``params`` with bias - zp * (sum over C_in of the centred weights), per output channel: the
    GEMM of the raw input bytes x then equals that of (x - zp) (sum_k (x_k - zp) w_k = sum_k x_k w_k
    - zp sum_k w_k; the int32 sums wrap alike)."""
    panels = params.shape[1] // PANEL
    sums = packed.astype(np.int64).reshape(panels, -1, 2, PANEL // 2, 2).sum(axis=(1, 4)).reshape(-1)
    folded = params.copy()
    folded[0] = (params[0].astype(np.int64) - zero_point * sums).astype(np.int32)
    return folded


class Gemm:
    """The GEMM and requantization of rows [pixels * kp] (int16 centred values, or the raw bytes with the
    zero point folded into ``params``) into [pixels, C_out], with all but the two arrays worked out once
    (the fast graph keeps one per op and input shape): the padded buffer if C_out is not whole panels,
    the thread count (``parts``, decided now), the scalar arguments.  The call's argument tuple (flat views, a split call's task address)
    is kept while the same arrays come back, as the fast graph's buffers do.  One thread at a time.  ``tasks``: a
    kernel with ``gemm_tasks``' arguments to run instead (``integer_conv.conv_tasks``), split by ``gemm_parallel``
    at its address."""

    def __init__(self, pixels, kp, packed, params, c_out, out_zero_point, clamp, rounding="reference", scales=None,
                 scratch=None, tasks=None):
        panels = -(-c_out // PANEL)
        self.pixels, self.c_out = pixels, c_out
        self.padded = None if c_out == panels * PANEL else Scratch.take_from(scratch, pixels * panels * PANEL, np.uint8)
        scales = np.zeros(panels * PANEL, np.float32) if scales is None else scales
        self.parts = parts(pixels * kp * panels * PANEL)
        self.tasks = (pixels + CHUNK - 1) // CHUNK * panels
        self.args = (pixels, kp, packed, panels, params, scales, ROUNDINGS[rounding], out_zero_point, *clamp)
        self.tasks_kernel = gemm_tasks if tasks is None else tasks
        self.kernel = self.tasks_kernel if self.parts == 1 else gemm_parallel
        self.seen = (None, None)

    def __call__(self, rows, out):
        """rows [pixels * kp] (flat) -> out (C-contiguous, pixels x C_out values of the output type)."""
        if rows is not self.seen[0] or out is not self.seen[1]:
            self.seen, (self.call, self.copy) = remembered(rows, out), self._arguments(rows, out)
        self.kernel(*self.call)
        if self.copy:
            np.copyto(*self.copy)
        return out

    def calls(self, rows, out) -> list:
        """``__call__(rows, out)`` as the compiled calls it makes, [(function, arguments)], for a caller
        that passes these same arrays every time (the fast graph's plan runs them without this wrapper)."""
        call, copy = self._arguments(rows, out)
        return [(self.kernel, call)] + ([(np.copyto, copy)] if copy else [])

    def _arguments(self, rows, out):
        # int8 and uint8 outputs store the same bytes (the values are clamped in range): one compile for both
        stored = out.reshape(-1).view(np.uint8) if self.padded is None else self.padded
        call = (rows, 0, self.tasks, *self.args, stored)
        if self.parts > 1:
            call = (rows, *self.args, stored, self.parts, address_for(self.tasks_kernel, call))
        copy = None if self.padded is None else _columns(out, self.padded, self.pixels, self.c_out)
        return call, copy


def _columns(out, padded, pixels: int, c_out: int) -> tuple:
    """(destination, source) copying each padded row's first C_out bytes into ``out`` up to 8 bytes at a time
    (C_out 8: one uint64 per pixel, 2.6 us at 48 x 48 where byte rows took 26 us)."""
    unit = next(u for u in (8, 4, 2, 1) if c_out % u == 0)
    wide = np.dtype(f"u{unit}")
    source = padded.reshape(pixels, -1).view(wide)[:, :c_out // unit]
    return out.reshape(pixels, c_out).view(np.uint8).view(wide), source


class Pointwise:
    """``pointwise_conv2d`` bound to its shapes and weights (see ``Gemm``): an even C_in below
    ``BYTES_BELOW`` multiplies the input bytes as they are (``fold_zero_point``; ``folded``, if kept);
    others are centred into an int16 buffer first (one more column when C_in is odd), on one thread
    (~10 G/s: V1's largest, 20 x 20 x 128 at batch 32, ~0.15 ms; a parallel twin cost 2 s of compile).
    ``tasks``: a kernel to run in place of ``gemm_tasks`` on the input bytes, with ``packed`` and
    ``folded`` in its layout (``integer_dot4.dot4_tasks``)."""

    def __init__(self, pixels, c_in, x_zero_point, packed, params, c_out, out_zero_point, clamp,
                 rounding="reference", scales=None, folded=None, scratch=(None, None), tasks=None):
        self.pixels, self.c_in, self.x_zero_point = pixels, c_in, x_zero_point
        if tasks is not None:
            self.centred, self.kp = None, c_in
            params = folded
        elif c_in % 2 == 0 and c_in < BYTES_BELOW:
            self.centred, self.kp = None, c_in
            params = fold_zero_point(packed, params, x_zero_point) if folded is None else folded
        else:
            self.kp = c_in + c_in % 2
            # (an odd C_in's extra column may hold anything: it meets the zero weights pack_pairs pads with)
            self.centred = Scratch.take_from(scratch[0], pixels * self.kp, np.int16)
        self.gemm = Gemm(pixels, self.kp, packed, params, c_out, out_zero_point, clamp, rounding, scales, scratch[1],
                         tasks)
        self.seen = (None,)

    def calls(self, x, out):
        """As ``Gemm.calls``; None if x is not C-contiguous (its flat copy would not follow it)."""
        if not x.flags.c_contiguous:
            return None
        rows = x.reshape(-1)
        if self.centred is None:
            return self.gemm.calls(rows, out)
        centre = (centre_rows, (rows, 0, self.pixels, self.c_in, self.x_zero_point, self.kp, self.centred))
        return [centre] + self.gemm.calls(self.centred, out)

    def __call__(self, x, out):
        """x [pixels, C_in] (any shape of those) -> out, C-contiguous [pixels, C_out]."""
        if x is not self.seen[0]:
            self.seen, self.rows = remembered(x), np.ascontiguousarray(x).reshape(-1)
        if self.centred is None:
            return self.gemm(self.rows, out)
        centre_rows(self.rows, 0, self.pixels, self.c_in, self.x_zero_point, self.kp, self.centred)
        return self.gemm(self.centred, out)


def pointwise_conv2d(x, x_zero_point, packed, params, c_out, out_zero_point, clamp, out,
                     rounding: str = "reference", scales=None, folded=None):
    """1x1 integer convolution: x [P, C_in] (uint8/int8) -> out [P, C_out] of the output type,
    with ``packed = pack_pairs(w, w_zero_point)`` and ``params = requantization_params(...)``;
    ``rounding`` "xnnpack" takes ``scales = xnnpack_scales(...)`` instead of the multipliers
    (``Pointwise`` does the work)."""
    pointwise = Pointwise(*x.shape, x_zero_point, packed, params, c_out, out_zero_point, clamp, rounding, scales,
                          folded)
    return contiguous(out, lambda buffer: pointwise(x, buffer))
