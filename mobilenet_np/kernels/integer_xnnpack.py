"""What LiteRT's default XNNPACK delegate computes where it departs from TFLite's integer kernels.

XNNPACK, which LiteRT applies by default, does not requantize with TFLite's fixed-point
multiplier: its convolutions and pools convert the int32 sum to float32, multiply by a float32
scale, clamp in float, and round to nearest (ties to even).  These functions reproduce that, as
found by comparing with LiteRT (tests/test_quantized_forward.py); the int32 sums themselves
are those of ``integer_reference``.

Deliberately small: only the ops where XNNPACK was seen to differ, each checked on whole models
only (a delegate's intermediate tensors cannot be read back).
"""

from __future__ import annotations

import numpy as np

from .integer_reference import DTYPE_RANGES


def conv_scales(input_scale, filter_scales, output_scale) -> np.ndarray:
    """Per output channel, (input_scale * filter_scale) / output_scale in float32."""
    return (np.float32(input_scale) * np.asarray(filter_scales, np.float32)) / np.float32(output_scale)


def requantize_fp32(acc, scale, zero_point: int, clamp: tuple[int, int], dtype):
    """float32(acc) * scale, clamped to the output range (less the zero point), rounded to
    nearest with ties to even, plus the zero point."""
    lo, hi = clamp
    value = np.asarray(acc).astype(np.float32) * np.asarray(scale, np.float32)
    value = np.minimum(np.maximum(value, np.float32(lo - zero_point)), np.float32(hi - zero_point))
    return (np.rint(value).astype(np.int64) + zero_point).astype(dtype)


def global_average(x, in_scale, in_zero_point, out_scale, out_zero_point, dtype, keepdims=True):
    """A pool over the whole map (AVERAGE_POOL_2D with the map's size, or MEAN over H and W):
    the centred sum times in_scale / (out_scale * count) in float32."""
    x = np.asarray(x, np.int64)
    count = x.shape[1] * x.shape[2]
    centred = x.sum(axis=(1, 2), keepdims=keepdims) - count * in_zero_point
    scale = np.float32(in_scale) / (np.float32(out_scale) * np.float32(count))
    return requantize_fp32(centred, scale, out_zero_point, DTYPE_RANGES[np.dtype(dtype)], dtype)


# XNNPACK's quantized ADD keeps the larger of the two input/output scale ratios at 20 bits: a
# multiplier below 2^21 (the constant 19 matched LiteRT equally on our models; 21 did not).
ADD_MULTIPLIER_BITS = 20


def add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point, clamp, dtype):
    """Quantized ADD as XNNPACK computes it: each input times an integer multiplier for
    (its scale / the output scale) in float32, scaled by 2^shift so the larger has 21 bits,
    the zero points and a rounding half folded into one bias, an arithmetic right shift (ties
    round up), the clamp, then the output zero point."""
    ratio_a = np.float32(a_scale) / np.float32(out_scale)
    ratio_b = np.float32(b_scale) / np.float32(out_scale)
    exponent = int(np.frexp(max(abs(ratio_a), abs(ratio_b)))[1]) - 1       # the float's unbiased exponent
    shift = ADD_MULTIPLIER_BITS - exponent
    multiplier_a = int(np.rint(ratio_a * np.float32(2.0 ** shift)))         # exact scaling, then ties to even
    multiplier_b = int(np.rint(ratio_b * np.float32(2.0 ** shift)))
    bias = (1 << (shift - 1)) - multiplier_a * a_zero_point - multiplier_b * b_zero_point
    total = bias + np.asarray(a, np.int64) * multiplier_a + np.asarray(b, np.int64) * multiplier_b
    lo, hi = clamp
    return (np.clip(total >> shift, lo - out_zero_point, hi - out_zero_point) + out_zero_point).astype(dtype)
