"""The integer depthwise 3x3 convolution in Numba, with LiteRT's three requantizations.

Tested against ``integer_reference.depthwise_conv2d_accumulate`` and its requantizations.
The input is centred and zero-padded once (``centre_padded``: (q - zero_point) as int16 with
the SAME padding around it and the channels padded to a multiple of 8, so that padding
contributes exactly nothing, as in TFLite), the kernel centred likewise (``pack_depthwise``).
Each output pixel then takes eight channels at a time: nine widened multiply-adds into one
``<8 x i32>`` sum, requantized in registers (``integer_gemm.emit_bytes``) and stored as bytes.

Deliberately simple: no tiling over pixels and no threads yet (the depthwise layers are about
a tenth of MobileNet's multiply-adds); the float kernel's tiles (kernels/depthwise.py) are the model
for a faster one.
"""

from __future__ import annotations

import numpy as np

from . import integer_simd as iv
from .integer_gemm import ROUNDINGS, emit_bytes
from .jit import kernel

LANES = 8


def padded_channels(c: int) -> int:
    return -(-c // LANES) * LANES


def centre_padded(x: np.ndarray, zero_point: int, pad) -> np.ndarray:
    """x [N, H, W, C] -> (x - zero_point) int16 [N, H + top + bottom, W + left + right, C8], zeros around."""
    n, h, w, c = x.shape
    top, bottom, left, right = pad
    out = np.zeros((n, h + top + bottom, w + left + right, padded_channels(c)), np.int16)
    out[:, top:top + h, left:left + w, :c] = x.astype(np.int16) - np.int16(zero_point)
    return out


def pack_depthwise(w: np.ndarray, zero_point) -> np.ndarray:
    """w [kh, kw, C, 1] -> (w - zero_point) int16 [kh, kw, C8], flat."""
    kh, kw, c, _ = w.shape
    out = np.zeros((kh, kw, padded_channels(c)), np.int16)
    out[:, :, :c] = w[:, :, :, 0].astype(np.int16) - np.asarray(zero_point, np.int16).reshape(-1)
    return out.reshape(-1)


@kernel()
def depthwise_requantize(x, n_img, hp, wp, c8, w, k, stride, out_h, out_w, params, scales, rounding,
                         zero_point, lo, hi, out):
    """out [n, out_h, out_w, c8] bytes (flat) from the centred padded x [n, hp, wp, c8] (flat)."""
    for n in range(n_img):
        for oy in range(out_h):
            for ox in range(out_w):
                o_at = ((n * out_h + oy) * out_w + ox) * c8
                for c in range(0, c8, 8):
                    acc = iv.zeros()
                    for dy in range(k):
                        row = (n * hp + oy * stride + dy) * wp
                        for dx in range(k):
                            x_at = (row + ox * stride + dx) * c8 + c
                            acc = iv.mul_add(acc, iv.load_widened(x, x_at), iv.load_widened(w, (dy * k + dx) * c8 + c))
                    emit_bytes(acc, params, scales, rounding, c, zero_point, lo, hi, out, o_at + c)


def depthwise_conv2d(x, x_zero_point, packed, k, stride, pad, out_hw, params, out_zero_point, clamp, out,
                     rounding: str = "reference", scales=None):
    """Depthwise k x k convolution (multiplier 1): x [N, H, W, C] -> out [N, OH, OW, C] of the
    output type, ``packed = pack_depthwise(w, w_zero_point)``, ``params`` and ``scales`` as for
    ``integer_gemm.pointwise_conv2d`` (padded to at least a multiple of 8 channels)."""
    c = x.shape[3]
    centred = centre_padded(x, x_zero_point, pad)
    n, hp, wp, c8 = centred.shape
    padded = np.empty((n, *out_hw, c8), out.dtype)
    scales = np.zeros(params.shape[1], np.float32) if scales is None else scales
    depthwise_requantize(centred.reshape(-1), n, hp, wp, c8, packed, k, stride, out_hw[0], out_hw[1], params,
                         scales, ROUNDINGS[rounding], out_zero_point, clamp[0], clamp[1], padded.reshape(-1))
    out[:] = padded[..., :c]
    return out
