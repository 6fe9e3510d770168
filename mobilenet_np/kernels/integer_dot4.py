"""The integer 1x1 convolution on four-byte dot products (AVX-512 VNNI's ``vpdpbusd``).

``integer_gemm`` multiplies int16 pairs (``vpmaddwd``: two multiply-adds per int32 lane).  On a
CPU with AVX-512 VNNI, ``vpdpbusd`` does four per lane, sixteen lanes wide: an unsigned byte of
the input times a signed byte of the weights, four such products added into each int32 sum.
That is the instruction XNNPACK's int8 kernels use there.  The same GEMM on it:

* the input bytes are used as they are (uint8; the fast graph holds int8 activations as
  uint8 + 128), with the input zero point folded into the bias (``fold_zero_point``:
  sum (x - zp) w = sum x w - zp sum w);
* the weights, centred on their zero point, fit int8 for the int8 models (symmetric, zero point
  0) and for a uint8 model's layer when every w - zero point lies in [-128, 127]; other uint8
  layers take ``pack_quads``' split form (w - 128 and 128 - zp, ``dot4_split_tasks``: the
  products with 128 - zp one more ``dot4`` a step below ``SUM_FROM`` input channels, above it
  128 - zp times the pixel's byte sum, ``integer_wide.byte_sum``);
* ``pack_quads`` lays them out as [panel of 16 channels, quad of 4 input channels, channel,
  tap]: each step of the tile loads 64 bytes, the quad's taps of the panel's 16 channels;
* a tile of 8 pixels x 16 channels keeps eight ``<16 x i32>`` sums in registers; each step
  broadcasts a pixel's four input bytes (``splat_quad``) and does ``dot4`` with the weights;
* the sums start at the bias and are requantized sixteen lanes at a time with the panel's
  parameters held in registers (``integer_wide.block_params`` / ``requantized_block``) exactly as
  ``integer_gemm`` does, so the bytes out are the same (the integer sums are equal).

``dot4_tasks`` has ``gemm_tasks``' signature (the weights as int16, viewed), so ``Gemm`` and its
thread split, the padded outputs and the fast graph's programs take it in its place.  Without
VNNI ``dot4`` is portable IR (same results, slower than ``integer_gemm``; used only to test it:
``integer_wide.DOT4_VNNI``).  Needs C_in a multiple of 4 (every 1x1 layer of these networks).
"""

from __future__ import annotations

import numpy as np

from . import integer_simd as iv
from . import integer_wide as iw
from .integer_gemm import CHUNK, PANEL
from .jit import kernel

QUAD = 4             # input channels per dot product
TILE = 8             # pixels per tile
ONE = np.array([1, 0, 0, 0], np.uint8)      # a quad whose dot product with a weight quad is its first byte
# The split form adds (128 - zp) * (the pixel's sum of input bytes, ``integer_wide.byte_sum``) after the
# tile's steps where it has this many input channels or more; below, each step's products with 128 - zp
# (one more dot4 per step).  V1 0.5/160 uint8 at batch 32, per layer: K = 16 and 32 ran 28% and 14%
# slower summed, K = 64 the same, K = 128 1.05-1.2x and K = 256 and 512 1.2-1.3x faster.
SUM_FROM = 128


def usable() -> bool:
    """Whether the fast graph should use this GEMM: only where ``dot4`` is the instruction."""
    return iw.DOT4_VNNI


def _panels(centred: np.ndarray, c_out: int) -> np.ndarray:
    """int8 [C_in, C_out] -> [panel, quad q, channel c, tap k = 4q..4q+3], flat."""
    c_in = centred.shape[0]
    panels = -(-c_out // PANEL)
    padded = np.zeros((c_in, panels * PANEL), np.int8)
    padded[:, :c_out] = centred
    return np.ascontiguousarray(padded.reshape(c_in // QUAD, QUAD, panels, PANEL).transpose(2, 0, 3, 1)).reshape(-1)


def pack_quads(w: np.ndarray, zero_point):
    """w [C_in, C_out] uint8/int8 and its zero point(s) -> (int8 panels, flat, viewed as int16;
    the kernel that reads them), or None if C_in is not a multiple of 4 or neither form holds.

    When every centred weight w - zp fits int8: [panel, quad q, channel c, tap k = 4q..4q+3]
    for ``dot4_tasks``.  Otherwise (a uint8 layer whose weights lie more than 128 from their
    zero point, zero points 1-255): w - zp = (w - 128) + (128 - zp), both terms int8; the panels
    hold w - 128, followed by one vector per panel of 128 - zp in every tap, and
    ``dot4_split_tasks`` adds the input quad's products with both (two ``vpdpbusd`` per step: the
    int32 sums are exact, so the bytes are the same)."""
    c_in, c_out = w.shape
    if c_in % QUAD:
        return None
    zp = np.broadcast_to(np.asarray(zero_point, np.int16).reshape(-1), (c_out,))
    centred = w.astype(np.int16) - zp
    if centred.min(initial=0) >= -128 and centred.max(initial=0) <= 127:
        return _panels(centred.astype(np.int8), c_out).view(np.int16), dot4_tasks
    if w.dtype != np.uint8 or zp.min() < 1:
        return None
    shifted = (w.astype(np.int16) - 128).astype(np.int8)
    offsets = np.broadcast_to((128 - zp).astype(np.int8)[None, :], (QUAD, c_out))
    packed = np.concatenate([_panels(shifted, c_out), _panels(offsets, c_out)])
    return packed.view(np.int16), dot4_split_tasks


def fold_zero_point(w: np.ndarray, w_zero_point, params: np.ndarray, zero_point: int) -> np.ndarray:
    """``params`` with bias - zp * (sum over C_in of w - w_zero_point) per output channel: the
    GEMM of the raw input bytes then equals that of (x - zp) (``integer_gemm.fold_zero_point``)."""
    c_out = w.shape[1]
    sums = (w.astype(np.int64) - np.asarray(w_zero_point, np.int64).reshape(-1)).sum(axis=0)
    folded = params.copy()
    folded[0, :c_out] = (params[0, :c_out].astype(np.int64) - zero_point * sums).astype(np.int32)
    return folded


@kernel(inline=True)
def _store16(acc, block, rounding, zero_point, lo, hi, out, o_at):
    """Sums that started at the bias, requantized by the panel's ``block_params`` and stored as bytes."""
    iv.store_bytes(out, o_at, iw.requantized_block(acc, block, rounding, zero_point, lo, hi))


@kernel(inline=True)
def _tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out, split):
    """out [pixels, panels * 16] (bytes, flat) = requantized (x [pixels, kp] bytes times the
    panels), for tasks t0..t1-1: task t is (up to ``CHUNK`` pixels) x (one panel), the chunk
    outermost, as ``integer_gemm.gemm_tasks``.  ``w``: ``pack_quads``' int8 viewed as int16;
    ``split`` (a constant): its second form, the products with the panel's offsets (128 - zp per
    channel) added each step, or as 128 - zp times the pixel's byte sum after the steps where
    C_in >= ``SUM_FROM``."""
    row = panels * PANEL
    quads = kp // QUAD
    summed = split and kp >= SUM_FROM
    inline = split and not summed
    offsets_at = panels * quads * QUAD * PANEL           # bytes: the split form's offset vectors
    for task in range(t0, t1):
        ch = task // panels
        g = task - ch * panels
        w_at = g * quads * QUAD * PANEL          # bytes
        c = g * PANEL
        offsets = iw.load_quads(w, offsets_at + g * QUAD * PANEL) if split else iw.zeros16()
        if summed:                               # the panel's 128 - zp per channel as int32 lanes
            offsets = iw.dot4(iw.zeros16(), iw.splat_quad(ONE, 0), offsets)
        block = iw.block_params(params, scales, c)       # the panel's requantization, in registers
        p = ch * CHUNK
        end = min(p + CHUNK, pixels)
        while p + TILE <= end:
            a0 = block[0]
            a1 = block[0]
            a2 = block[0]
            a3 = block[0]
            a4 = block[0]
            a5 = block[0]
            a6 = block[0]
            a7 = block[0]
            x_at = p * kp
            for q in range(quads):
                wq = iw.load_quads(w, w_at + q * QUAD * PANEL)
                k = x_at + q * QUAD
                x0, x1, x2, x3 = iw.splat_quad(x, k), iw.splat_quad(x, k + kp), iw.splat_quad(x, k + 2 * kp), \
                    iw.splat_quad(x, k + 3 * kp)
                x4, x5, x6, x7 = iw.splat_quad(x, k + 4 * kp), iw.splat_quad(x, k + 5 * kp), \
                    iw.splat_quad(x, k + 6 * kp), iw.splat_quad(x, k + 7 * kp)
                a0, a1, a2, a3 = iw.dot4(a0, x0, wq), iw.dot4(a1, x1, wq), iw.dot4(a2, x2, wq), iw.dot4(a3, x3, wq)
                a4, a5, a6, a7 = iw.dot4(a4, x4, wq), iw.dot4(a5, x5, wq), iw.dot4(a6, x6, wq), iw.dot4(a7, x7, wq)
                if inline:                      # split, few input channels: each quad's products with 128 - zp
                    a0, a1, a2 = iw.dot4(a0, x0, offsets), iw.dot4(a1, x1, offsets), iw.dot4(a2, x2, offsets)
                    a3, a4, a5 = iw.dot4(a3, x3, offsets), iw.dot4(a4, x4, offsets), iw.dot4(a5, x5, offsets)
                    a6, a7 = iw.dot4(a6, x6, offsets), iw.dot4(a7, x7, offsets)
            if summed:                          # split, many: 128 - zp times the pixel's sum of input bytes
                a0 = iw.scaled_add(a0, iw.byte_sum(x, x_at, kp), offsets)
                a1 = iw.scaled_add(a1, iw.byte_sum(x, x_at + kp, kp), offsets)
                a2 = iw.scaled_add(a2, iw.byte_sum(x, x_at + 2 * kp, kp), offsets)
                a3 = iw.scaled_add(a3, iw.byte_sum(x, x_at + 3 * kp, kp), offsets)
                a4 = iw.scaled_add(a4, iw.byte_sum(x, x_at + 4 * kp, kp), offsets)
                a5 = iw.scaled_add(a5, iw.byte_sum(x, x_at + 5 * kp, kp), offsets)
                a6 = iw.scaled_add(a6, iw.byte_sum(x, x_at + 6 * kp, kp), offsets)
                a7 = iw.scaled_add(a7, iw.byte_sum(x, x_at + 7 * kp, kp), offsets)
            o_at = p * row + c
            _store16(a0, block, rounding, zero_point, lo, hi, out, o_at)
            _store16(a1, block, rounding, zero_point, lo, hi, out, o_at + row)
            _store16(a2, block, rounding, zero_point, lo, hi, out, o_at + 2 * row)
            _store16(a3, block, rounding, zero_point, lo, hi, out, o_at + 3 * row)
            _store16(a4, block, rounding, zero_point, lo, hi, out, o_at + 4 * row)
            _store16(a5, block, rounding, zero_point, lo, hi, out, o_at + 5 * row)
            _store16(a6, block, rounding, zero_point, lo, hi, out, o_at + 6 * row)
            _store16(a7, block, rounding, zero_point, lo, hi, out, o_at + 7 * row)
            p += TILE
        while p < end:
            a = block[0]
            for q in range(quads):
                xq = iw.splat_quad(x, p * kp + q * QUAD)
                a = iw.dot4(a, xq, iw.load_quads(w, w_at + q * QUAD * PANEL))
                if inline:
                    a = iw.dot4(a, xq, offsets)
            if summed:
                a = iw.scaled_add(a, iw.byte_sum(x, p * kp, kp), offsets)
            _store16(a, block, rounding, zero_point, lo, hi, out, p * row + c)
            p += 1


@kernel()
def dot4_tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out):
    """Tasks t0..t1-1 of the 1x1 layer on ``pack_quads``' first form (``_tasks``)."""
    _tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out, False)


@kernel()
def dot4_split_tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out):
    """Tasks t0..t1-1 of the 1x1 layer on ``pack_quads``' split form (``_tasks``)."""
    _tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out, True)
