"""The integer 1x1 convolution in Numba: int16 pairs into int32 sums, then TFLite's requantization.

A first fast integer kernel (issue 17), tested against ``integer_reference`` (conv sums, then
``requantize``).  The work is a matrix product [pixels, C_in] x [C_in, C_out] on centred values:

* the input is centred once, (q - zero_point) as int16, with C_in padded to an even count
  (``centre_pairs``); the weights are centred and packed at load time (``pack_pairs``) so that
  for each pair of input channels (k, k+1) the 16 output channels of a panel read 32 contiguous
  int16 values: (w[k, c], w[k+1, c]) for c = 0..7, then for c = 8..15;
* a tile of 4 pixels x 16 channels keeps eight ``<8 x i32>`` sums in registers; each step
  broadcasts a pixel's (x[k], x[k+1]) pair and does ``madd`` (``vpmaddwd`` on AVX2: 16
  multiply-adds per instruction) against the two weight vectors;
* ``requantize_rows`` adds the bias and applies TFLite's double-rounding fixed-point multiply
  per output channel, the zero point and the clamp, in int64 scalars.

int16 holds every centred value: uint8 - zero point and int8 - zero point lie in [-255, 255],
and a pair of products (at most 2 * 255^2) plus the sums over C_in fit int32 for any C_in below
16,000.  Deliberately not here yet: the 3x3 and depthwise integer kernels, threads, and fusing the
requantization into the tile (the int32 sums go through memory once).
"""

from __future__ import annotations

import numpy as np

from . import integer_simd as iv
from .jit import kernel

PANEL = 16            # output channels per tile: two vectors of 8 int32 sums


def centre_pairs(x: np.ndarray, zero_point: int) -> np.ndarray:
    """x [P, C_in] uint8/int8 -> (x - zero_point) as int16 [P, C_in rounded up to even], flat."""
    pixels, c_in = x.shape
    out = np.zeros((pixels, c_in + c_in % 2), np.int16)
    out[:, :c_in] = x.astype(np.int16) - np.int16(zero_point)
    return out.reshape(-1)


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


@kernel(inline=True)
def _tile4(x, x_at, kp, w, w_at, acc, a_at, row):
    """Sums of 4 pixels (rows x_at, x_at + kp, ...) x 16 channels, stored at acc[a_at + r * row]."""
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
    iv.store(acc, a_at, a0)
    iv.store(acc, a_at + 8, b0)
    iv.store(acc, a_at + row, a1)
    iv.store(acc, a_at + row + 8, b1)
    iv.store(acc, a_at + 2 * row, a2)
    iv.store(acc, a_at + 2 * row + 8, b2)
    iv.store(acc, a_at + 3 * row, a3)
    iv.store(acc, a_at + 3 * row + 8, b3)


@kernel(inline=True)
def _tile1(x, x_at, kp, w, w_at, acc, a_at):
    """Sums of one pixel x 16 channels (the pixels left over after the 4-pixel tiles)."""
    a = iv.zeros()
    b = iv.zeros()
    for q in range(kp // 2):
        p = iv.splat_pair(x, x_at + 2 * q)
        a = iv.madd(a, p, iv.load_pairs(w, w_at + 32 * q))
        b = iv.madd(b, p, iv.load_pairs(w, w_at + 32 * q + 16))
    iv.store(acc, a_at, a)
    iv.store(acc, a_at + 8, b)


@kernel()
def gemm_int32(x, pixels, kp, w, panels, acc):
    """acc [pixels, panels * 16] (int32, flat) = centred x [pixels, kp] times the packed panels."""
    row = panels * PANEL
    for g in range(panels):
        w_at = g * (kp // 2) * 32
        p = 0
        while p + 4 <= pixels:
            _tile4(x, p * kp, kp, w, w_at, acc, p * row + g * PANEL, row)
            p += 4
        while p < pixels:
            _tile1(x, p * kp, kp, w, w_at, acc, p * row + g * PANEL)
            p += 1


@kernel()
def requantize_rows(acc, pixels, row, bias, multiplier, shift, zero_point, lo, hi, out):
    """out[p, c] = clamp(zero_point + TFLite's MultiplyByQuantizedMultiplier(acc + bias[c]))."""
    c_out = bias.shape[0]
    for p in range(pixels):
        for c in range(c_out):
            s = shift[c]
            lifted = np.int64(acc[p * row + c] + bias[c]) << (s if s > 0 else 0)
            product = lifted * np.int64(multiplier[c])
            total = product + ((1 << 30) if product >= 0 else 1 - (1 << 30))
            high = total >> 31 if total >= 0 else -((-total) >> 31)        # truncate toward zero
            right = -s if s < 0 else 0
            mask = (np.int64(1) << right) - 1
            threshold = (mask >> 1) + (1 if high < 0 else 0)
            value = (high >> right) + (1 if (high & mask) > threshold else 0) + zero_point
            out[p * c_out + c] = min(max(value, lo), hi)


def pointwise_conv2d(x, x_zero_point, packed, c_out, bias, multiplier, shift, out_zero_point, clamp, out):
    """1x1 integer convolution: x [P, C_in] (uint8/int8) -> out [P, C_out] of the output type,
    with ``packed = pack_pairs(w, w_zero_point)`` and per-channel int64 ``multiplier``/``shift``
    (``integer_reference.conv_multipliers``)."""
    pixels, c_in = x.shape
    kp = c_in + c_in % 2
    panels = -(-c_out // PANEL)
    acc = np.empty(pixels * panels * PANEL, np.int32)
    gemm_int32(centre_pairs(x, x_zero_point), pixels, kp, packed, panels, acc)
    requantize_rows(acc, pixels, panels * PANEL, np.asarray(bias, np.int64),
                    np.broadcast_to(np.asarray(multiplier, np.int64), (c_out,)).copy(),
                    np.broadcast_to(np.asarray(shift, np.int64), (c_out,)).copy(),
                    out_zero_point, clamp[0], clamp[1], out.reshape(-1))
    return out
