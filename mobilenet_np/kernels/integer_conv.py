"""The integer full k x k convolution (the stem: CONV_2D 3x3 stride 2 on 3 input channels).

``Conv`` centres the input, (q - zero point) as int16, into a buffer of its own with the padding
around it (zeros, written once, when it is made), and ``conv_tasks`` multiplies each output
pixel's patch rows straight from there: the GEMM of ``integer_gemm`` (4 pixels x 16 channels of
``vpmaddwd`` sums, requantized in registers) with each pixel at its own address in the input
instead of a row of gathered patches.  Until 2026-12-02 a gather copied every patch into an
im2col buffer (2 MB of bytes for V2 0.5/96 at batch 32) that the GEMM then read back: the gather
took as long as the GEMM.  A patch is k rows of k * C contiguous values; pairs of taps must not
straddle two rows, so an odd row (3 x 3 = 9 values) gets one zero weight after it
(``pack_rows``: 15 pairs instead of 14 for the stem; the extra tap reads the next value, the
buffer has slack after its end).  Centred int16 rather than the bytes: each tap pair is then one
32-bit broadcast load, where widening the bytes took two shuffles per pair and pixel (the tiles
ran 1.3-1.4x slower), and the centring (``integer_gemm.centre_rows``, per image) costs about what
copying the bytes did.

What compiles: ``conv_tasks`` has ``gemm_tasks``' argument types (its geometry rides in a fifth
row of ``params``, which ``requantized`` does not read), so a split goes through the compiled
``gemm_parallel`` at ``conv_tasks``' address: no prange twin; one form (int16) for uint8 and int8
inputs; one 4-pixel tile (the pixels past a task's end repeat its last pixel and are not stored).
"""

from __future__ import annotations

import numpy as np

from . import integer_conv4 as ic4
from . import integer_simd as iv
from .integer_calls import contiguous
from .integer_gemm import CHUNK, PANEL, Gemm, centre_rows, pack_pairs
from .jit import kernel

GEOMETRY = 4        # the row of conv_tasks' params that holds the geometry (``Conv``)


@kernel()
def _next_pixel(at, r, ox, out_w, out_h, step, hp, stride, pitch):
    """The input address of the output pixel after (row r of the batch's rows, column ox), its row and column."""
    if ox + 1 < out_w:
        return at + step, r, ox + 1
    r += 1
    n = r // out_h
    return (n * hp + (r - n * out_h) * stride) * pitch, r, 0


@kernel()
def conv_tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out):
    """``integer_gemm.gemm_tasks`` (same arguments) for a k x k convolution whose patches are read in place:
    x [N, Hp, Wp, C] (flat, int16) is the centred input inside its padding, w is packed by ``pack_rows``, and
    params[GEOMETRY] holds C, k, stride, Wp, Hp, out_h, out_w and kcp (taps per patch row, even).
    Task t: (up to 32 output pixels) x (one panel of 16 channels); a 4-pixel tile may span two output rows."""
    c, k, stride = np.int64(params[GEOMETRY, 0]), np.int64(params[GEOMETRY, 1]), np.int64(params[GEOMETRY, 2])
    wp, hp = np.int64(params[GEOMETRY, 3]), np.int64(params[GEOMETRY, 4])
    out_h, out_w, kcp = np.int64(params[GEOMETRY, 5]), np.int64(params[GEOMETRY, 6]), np.int64(params[GEOMETRY, 7])
    row = panels * PANEL
    pitch, step, pairs = wp * c, stride * c, kcp // 2
    for task in range(t0, t1):
        ch = task // panels
        g = task - ch * panels
        w_at = g * (kp // 2) * 32
        co = g * PANEL
        p = ch * CHUNK
        end = min(p + CHUNK, pixels)
        r = p // out_w
        ox = p - r * out_w
        n = r // out_h
        at = (n * hp + (r - n * out_h) * stride) * pitch + ox * step
        while p < end:
            x0 = at                 # pixels past the end repeat the last one (computed, not stored)
            x1 = x0
            if p + 1 < end:
                at, r, ox = _next_pixel(at, r, ox, out_w, out_h, step, hp, stride, pitch)
                x1 = at
            x2 = x1
            if p + 2 < end:
                at, r, ox = _next_pixel(at, r, ox, out_w, out_h, step, hp, stride, pitch)
                x2 = at
            x3 = x2
            if p + 3 < end:
                at, r, ox = _next_pixel(at, r, ox, out_w, out_h, step, hp, stride, pitch)
                x3 = at
            a0 = iv.zeros()
            b0 = iv.zeros()
            a1 = iv.zeros()
            b1 = iv.zeros()
            a2 = iv.zeros()
            b2 = iv.zeros()
            a3 = iv.zeros()
            b3 = iv.zeros()
            for dy in range(k):
                for q in range(pairs):
                    wq = w_at + 32 * (dy * pairs + q)
                    wa = iv.load_pairs(w, wq)
                    wb = iv.load_pairs(w, wq + 16)
                    t = dy * pitch + 2 * q
                    v = iv.splat_pair(x, x0 + t)
                    a0 = iv.madd(a0, v, wa)
                    b0 = iv.madd(b0, v, wb)
                    v = iv.splat_pair(x, x1 + t)
                    a1 = iv.madd(a1, v, wa)
                    b1 = iv.madd(b1, v, wb)
                    v = iv.splat_pair(x, x2 + t)
                    a2 = iv.madd(a2, v, wa)
                    b2 = iv.madd(b2, v, wb)
                    v = iv.splat_pair(x, x3 + t)
                    a3 = iv.madd(a3, v, wa)
                    b3 = iv.madd(b3, v, wb)
            o = p * row + co
            iv.store_bytes(out, o, iv.requantized(a0, params, scales, rounding, co, zero_point, lo, hi))
            iv.store_bytes(out, o + 8, iv.requantized(b0, params, scales, rounding, co + 8, zero_point, lo, hi))
            if p + 1 < end:
                iv.store_bytes(out, o + row, iv.requantized(a1, params, scales, rounding, co, zero_point, lo, hi))
                iv.store_bytes(out, o + row + 8, iv.requantized(b1, params, scales, rounding, co + 8, zero_point, lo, hi))
            if p + 2 < end:
                iv.store_bytes(out, o + 2 * row, iv.requantized(a2, params, scales, rounding, co, zero_point, lo, hi))
                iv.store_bytes(out, o + 2 * row + 8,
                               iv.requantized(b2, params, scales, rounding, co + 8, zero_point, lo, hi))
            if p + 3 < end:
                iv.store_bytes(out, o + 3 * row, iv.requantized(a3, params, scales, rounding, co, zero_point, lo, hi))
                iv.store_bytes(out, o + 3 * row + 8,
                               iv.requantized(b3, params, scales, rounding, co + 8, zero_point, lo, hi))
            if p + 4 < end:
                at, r, ox = _next_pixel(at, r, ox, out_w, out_h, step, hp, stride, pitch)
            p += 4


def pack_rows(packed: np.ndarray, k: int, kc: int, c_out: int) -> np.ndarray:
    """``pack_pairs`` weights of k rows of kc taps (k x k x C patches, kc = k * C) repacked for ``conv_tasks``:
    each patch row padded to an even count, kcp (an odd row gets a zero weight after it)."""
    panels = -(-c_out // PANEL)
    pairs = packed.size // (panels * PANEL * 2)
    # [panel, pair q, half, c, tap in pair] -> [q, tap in pair, panel, half, c]: the centred [taps, channels]
    centred = packed.reshape(panels, pairs, 2, PANEL // 2, 2).transpose(1, 4, 0, 2, 3).reshape(2 * pairs, -1)
    kcp = kc + kc % 2
    rows = np.zeros((k, kcp, panels * PANEL), np.int16)
    rows[:, :kc] = centred[:k * kc].reshape(k, kc, -1)
    return pack_pairs(rows.reshape(k * kcp, -1), 0)


SLACK = 16              # values after the padded input: the zero-weight tap after an odd last row reads one


class Conv:
    """``conv2d`` bound to its shapes and weights (see ``integer_gemm.Gemm``): the input centred into the middle
    of ``padded`` (``centre_rows``, one call per image, or one for all when there is no padding above or below),
    then ``conv_tasks``.  ``x_dtype``: how the bytes of x are read (the fast graph hands int8 tensors over as
    uint8 + 128, with the zero point + 128); ``folded`` is not needed (the values are centred) and ignored.
    One thread at a time (``padded`` is the object's own; the fast graph's plans are per thread)."""

    def __init__(self, x_shape, x_dtype, x_zero_point, packed, k, stride, pad, out_hw, params, c_out, out_zero_point,
                 clamp, rounding="reference", scales=None, folded=None, scratch=(None, None)):
        n, h, w, c = x_shape
        kcp = k * c + (k * c) % 2
        hp = max(pad[0] + h + pad[1], (out_hw[0] - 1) * stride + k)
        wp = max(pad[2] + w + pad[3], (out_hw[1] - 1) * stride + k)
        pitch = wp * c
        self.x_dtype, self.padded = np.dtype(x_dtype), np.zeros(n * hp * pitch + SLACK, np.int16)
        # image i's input rows p = i * h + iy land at padded row i * hp + top + iy: p * pitch + its offset
        images = [(0, n)] if hp == h else [(i, i + 1) for i in range(n)]
        self.centre = [(i * h, j * h, w * c, x_zero_point, pitch,
                        self.padded[(i * (hp - h) + pad[0]) * pitch + pad[2] * c:]) for i, j in images]
        geometry = np.zeros((GEOMETRY + 1, params.shape[1]), np.int32)
        geometry[:GEOMETRY] = params
        geometry[GEOMETRY, :8] = c, k, stride, wp, hp, out_hw[0], out_hw[1], kcp
        self.gemm = Gemm(n * out_hw[0] * out_hw[1], k * kcp, pack_rows(packed, k, k * c, c_out), geometry, c_out,
                         out_zero_point, clamp, rounding, scales, scratch[1], conv_tasks)

    def calls(self, x, out):
        """As ``Gemm.calls``; None if x is not C-contiguous (its flat view would not follow it)."""
        if not x.flags.c_contiguous:
            return None
        flat = x.reshape(-1).view(self.x_dtype)
        return [(centre_rows, (flat, *args)) for args in self.centre] + self.gemm.calls(self.padded, out)

    def __call__(self, x, out):
        """x [N, H, W, C] -> out, C-contiguous [N, OH, OW, C_out]."""
        flat = np.ascontiguousarray(x).reshape(-1).view(self.x_dtype)
        for args in self.centre:
            centre_rows(flat, *args)
        return self.gemm(self.padded, out)


def bound(x_shape, x_dtype, x_zero_point, packed, k, stride, pad, out_hw, params, c_out, out_zero_point, clamp,
          rounding="reference", scales=None, folded=None, scratch=(None, None)):
    """The convolution bound to its shapes and weights: ``integer_conv4.Conv4`` (the input bytes on VNNI's
    four-byte dot products) where ``ic4.usable`` and the read type is uint8 (the fast graph's int8 runs as
    uint8 + 128) and ``ic4.pack_quads`` takes the weights, else ``Conv``."""
    quads = None
    if np.dtype(x_dtype) == np.uint8 and ic4.usable():
        quads = ic4.pack_quads(packed, k, k * x_shape[3], c_out)
    if quads is None:
        return Conv(x_shape, x_dtype, x_zero_point, packed, k, stride, pad, out_hw, params, c_out, out_zero_point,
                    clamp, rounding, scales, folded, scratch)
    return ic4.Conv4(x_shape, x_zero_point, packed, quads, k, stride, pad, out_hw, params, c_out, out_zero_point,
                     clamp, rounding, scales, scratch)


def conv2d(x, x_zero_point, packed, k, stride, pad, out_hw, params, c_out, out_zero_point, clamp, out,
           rounding: str = "reference", scales=None, folded=None):
    """A full k x k convolution (the stem): x [N, H, W, C] -> out [N, OH, OW, C_out] (``bound``);
    ``packed = integer_gemm.pack_pairs(w [k * k * C, C_out] in OHWI order, w_zero_point)``."""
    conv = bound(x.shape, x.dtype, x_zero_point, packed, k, stride, pad, out_hw, params, c_out, out_zero_point, clamp,
                 rounding, scales, folded)
    return contiguous(out, lambda buffer: conv(x, buffer))
