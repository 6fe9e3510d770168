"""The integer 1x1 convolution on four-byte dot products (AVX-512 VNNI's ``vpdpbusd``).

``integer_gemm`` multiplies int16 pairs (``vpmaddwd``: two multiply-adds per int32 lane).  On a
CPU with AVX-512 VNNI, ``vpdpbusd`` does four per lane, sixteen lanes wide: an unsigned byte of
the input times a signed byte of the weights, four such products added into each int32 sum.
That is the instruction XNNPACK's int8 kernels use there.  The same GEMM on it:

* the input bytes are used as they are (uint8; the fast graph holds int8 activations as
  uint8 + 128), with the input zero point folded into the bias (``fold_zero_point``:
  sum (x - zp) w = sum x w - zp sum w);
* the weights, centred on their zero point, must fit int8: always for the int8 models (symmetric,
  zero point 0), and for a uint8 model's layer when every w - zero point lies in [-128, 127]
  (``pack_quads`` returns None otherwise, and the layer keeps ``integer_gemm``);
* ``pack_quads`` lays them out as [panel of 16 channels, quad of 4 input channels, channel,
  tap]: each step of the tile loads 64 bytes, the quad's taps of the panel's 16 channels;
* a tile of 8 pixels x 16 channels keeps eight ``<16 x i32>`` sums in registers; each step
  broadcasts a pixel's four input bytes (``splat_quad``) and does ``dot4`` with the weights;
* the sums are then requantized eight lanes at a time (``integer_simd.requantized``) exactly as
  ``integer_gemm`` does, so the bytes out are the same (the integer sums are equal).

``dot4_tasks`` has ``gemm_tasks``' signature (the weights as int16, viewed), so ``Gemm`` and its
thread split, the padded outputs and the fast graph's programs take it in its place.  Without
VNNI ``dot4`` is portable IR (same results, slower than ``integer_gemm``; used only to test it:
``integer_simd.DOT4_VNNI``).  Needs C_in a multiple of 4 (every 1x1 layer of these networks).
"""

from __future__ import annotations

import numpy as np

from . import integer_simd as iv
from .integer_gemm import CHUNK, PANEL
from .jit import kernel

QUAD = 4             # input channels per dot product
TILE = 8             # pixels per tile


def usable() -> bool:
    """Whether the fast graph should use this GEMM: only where ``dot4`` is the instruction."""
    return iv.DOT4_VNNI


def pack_quads(w: np.ndarray, zero_point) -> np.ndarray | None:
    """w [C_in, C_out] uint8/int8 and its zero point(s) -> centred int8 panels, flat, viewed as
    int16: [panel, quad q, channel c, tap k = 4q..4q+3]; None if C_in is not a multiple of 4 or
    a centred weight does not fit int8."""
    c_in, c_out = w.shape
    if c_in % QUAD:
        return None
    centred = w.astype(np.int16) - np.asarray(zero_point, np.int16).reshape(-1)
    if centred.min(initial=0) < -128 or centred.max(initial=0) > 127:
        return None
    panels = -(-c_out // PANEL)
    padded = np.zeros((c_in, panels * PANEL), np.int8)
    padded[:, :c_out] = centred
    blocks = padded.reshape(c_in // QUAD, QUAD, panels, PANEL).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(blocks).reshape(-1).view(np.int16)


def fold_zero_point(packed: np.ndarray, params: np.ndarray, zero_point: int) -> np.ndarray:
    """``params`` with bias - zp * (sum over C_in of the centred weights) per output channel
    (``integer_gemm.fold_zero_point`` for this layout)."""
    panels = params.shape[1] // PANEL
    sums = packed.view(np.int8).astype(np.int64).reshape(panels, -1, PANEL, QUAD).sum(axis=(1, 3)).reshape(-1)
    folded = params.copy()
    folded[0] = (params[0].astype(np.int64) - zero_point * sums).astype(np.int32)
    return folded


@kernel(inline=True)
def _store16(acc, params, scales, rounding, c, zero_point, lo, hi, out, o_at):
    iv.store_bytes(out, o_at, iv.requantized(iv.low(acc), params, scales, rounding, c, zero_point, lo, hi))
    iv.store_bytes(out, o_at + 8, iv.requantized(iv.high(acc), params, scales, rounding, c + 8, zero_point, lo, hi))


@kernel()
def dot4_tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out):
    """out [pixels, panels * 16] (bytes, flat) = requantized (x [pixels, kp] bytes times the
    panels), for tasks t0..t1-1: task t is (up to ``CHUNK`` pixels) x (one panel), the chunk
    outermost, as ``integer_gemm.gemm_tasks``.  ``w``: ``pack_quads``' int8 viewed as int16."""
    row = panels * PANEL
    quads = kp // QUAD
    for task in range(t0, t1):
        ch = task // panels
        g = task - ch * panels
        w_at = g * quads * QUAD * PANEL          # bytes
        c = g * PANEL
        p = ch * CHUNK
        end = min(p + CHUNK, pixels)
        while p + TILE <= end:
            a0 = iv.zeros16()
            a1 = iv.zeros16()
            a2 = iv.zeros16()
            a3 = iv.zeros16()
            a4 = iv.zeros16()
            a5 = iv.zeros16()
            a6 = iv.zeros16()
            a7 = iv.zeros16()
            x_at = p * kp
            for q in range(quads):
                wq = iv.load_quads(w, w_at + q * QUAD * PANEL)
                k = x_at + q * QUAD
                a0 = iv.dot4(a0, iv.splat_quad(x, k), wq)
                a1 = iv.dot4(a1, iv.splat_quad(x, k + kp), wq)
                a2 = iv.dot4(a2, iv.splat_quad(x, k + 2 * kp), wq)
                a3 = iv.dot4(a3, iv.splat_quad(x, k + 3 * kp), wq)
                a4 = iv.dot4(a4, iv.splat_quad(x, k + 4 * kp), wq)
                a5 = iv.dot4(a5, iv.splat_quad(x, k + 5 * kp), wq)
                a6 = iv.dot4(a6, iv.splat_quad(x, k + 6 * kp), wq)
                a7 = iv.dot4(a7, iv.splat_quad(x, k + 7 * kp), wq)
            o_at = p * row + c
            _store16(a0, params, scales, rounding, c, zero_point, lo, hi, out, o_at)
            _store16(a1, params, scales, rounding, c, zero_point, lo, hi, out, o_at + row)
            _store16(a2, params, scales, rounding, c, zero_point, lo, hi, out, o_at + 2 * row)
            _store16(a3, params, scales, rounding, c, zero_point, lo, hi, out, o_at + 3 * row)
            _store16(a4, params, scales, rounding, c, zero_point, lo, hi, out, o_at + 4 * row)
            _store16(a5, params, scales, rounding, c, zero_point, lo, hi, out, o_at + 5 * row)
            _store16(a6, params, scales, rounding, c, zero_point, lo, hi, out, o_at + 6 * row)
            _store16(a7, params, scales, rounding, c, zero_point, lo, hi, out, o_at + 7 * row)
            p += TILE
        while p < end:
            a = iv.zeros16()
            for q in range(quads):
                a = iv.dot4(a, iv.splat_quad(x, p * kp + q * QUAD), iv.load_quads(w, w_at + q * QUAD * PANEL))
            _store16(a, params, scales, rounding, c, zero_point, lo, hi, out, p * row + c)
            p += 1

