"""The integer reference kernels: TensorFlow Lite's quantized arithmetic in plain NumPy.

A quantized tensor holds integers q with a scale and a zero point, real = scale * (q - zero_point).
TFLite never leaves the integers at run time: a convolution sums (q_in - zp_in) * (q_w - zp_w)
in int32, adds an int32 bias, and maps the sum to the output's scale with a *fixed-point*
multiplier (an int32 significand and a power-of-two shift, chosen once from the float scales),
rounding exactly as TFLite's reference kernels do.  This module reproduces those rules bit for
bit; ``forward/quantized.py`` runs a whole .tflite graph with them.

Arrays hold the integers in int64 here, so no intermediate can wrap: TFLite's int32 sums
never overflow for these networks (|sum| < 255 * 255 * 9 * 1280), and every step that TFLite
does in int32 with saturation or truncation is written out below with the same saturation or
truncation.  Weights use TF-Slim layouts as ``reference.py`` does (conv HWIO, depthwise
[kh, kw, C, 1]); activations are NHWC.  The float-to-fixed-point conversions (``quantize_multiplier``
and friends) use Python floats, which are IEEE doubles, as TFLite's C++ does.

It deliberately does not: run fast (``integer_*`` Numba kernels do), handle int16 activations,
dilation, or TFLite's optional single-rounding build (``TFLITE_SINGLE_ROUNDING``).
The softmax, with its own fixed-point exponential, is in ``integer_softmax.py``.
"""

from __future__ import annotations

import math

import numpy as np

from .reference import _taps

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
DTYPE_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
# ADD lifts both inputs by 2^20 before rescaling them to a common scale, so that the rounding
# of that rescaling is far below one output step (add.cc; 15 for int16, which we do not support).
ADD_LEFT_SHIFT = 20


# --- fixed-point arithmetic ------------------------------------------------------------------

def quantize_multiplier(real: float) -> tuple[int, int]:
    """A positive real multiplier as (significand, shift): real ~ significand * 2^(shift - 31),
    significand in [2^30, 2^31).  A positive shift is a left shift.  TFLite's QuantizeMultiplier:
    frexp, then round half away from zero to 31 bits."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)                 # real = fraction * 2^shift, fraction in [0.5, 1)
    significand = math.floor(abs(fraction) * (1 << 31) + 0.5)   # std::round, for a positive value
    if significand == 1 << 31:                         # rounded up to 1.0: renormalise
        significand //= 2
        shift += 1
    if shift < -31:                                    # too small to represent: zero
        return 0, 0
    return significand, shift


def saturating_rounding_doubling_high_mul(a, b):
    """The high 32 bits of 2 * a * b, rounded to nearest (ties away from zero), for int32 a and b.
    The one overflowing case, a = b = -2^31, saturates to INT32_MAX."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    product = a * b                                    # exact: |a * b| <= 2^62
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    total = product + nudge
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))   # C++ division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent, ties_up: bool = False):
    """x / 2^exponent rounded to nearest, ties away from zero (gemmlowp's RoundingDivideByPOT);
    ``ties_up``: ties toward +infinity instead, as LiteRT's optimized kernels round."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (0 if ties_up else (x < 0))
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift, ties_up: bool = False):
    """round(x * multiplier * 2^(shift - 31)) as TFLite computes it: left shift first (when the
    multiplier exceeds 1), then the doubling high multiply, then a rounding right shift.
    The two roundings are TFLite's; ``multiplier`` and ``shift`` broadcast (per channel).
    ``ties_up``: the right shift rounds ties toward +infinity (LiteRT's optimized conv kernels)."""
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    lifted = x * (np.int64(1) << left)
    assert np.all((lifted >= INT32_MIN) & (lifted <= INT32_MAX)), "int32 overflow before requantization"
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(lifted, multiplier), right, ties_up)


def conv_multipliers(input_scale, filter_scales, output_scale, per_tensor: bool):
    """The requantization (multipliers, shifts) of a conv, one per output channel.

    Two rules, both TFLite's (kernel_util.cc): int8 (per-channel) computes each channel's
    input_scale * filter_scale / output_scale in double; the legacy uint8 per-tensor path
    first multiplies input_scale * filter_scale in *float32*, then divides in double.  The two
    can give different significands, so the uint8 rule is kept exactly.
    """
    filter_scales = np.asarray(filter_scales, np.float32).reshape(-1)
    if per_tensor:
        product = float(np.float32(input_scale) * filter_scales[0])       # float32 product
        reals = [product / float(np.float32(output_scale))]
    else:
        reals = [float(np.float32(input_scale)) * float(s) / float(np.float32(output_scale))
                 for s in filter_scales]
    pairs = [quantize_multiplier(r) for r in reals]
    return (np.array([m for m, _ in pairs], np.int64), np.array([s for _, s in pairs], np.int64))


def activation_range(activation: str, scale: float, zero_point: int, dtype) -> tuple[int, int]:
    """The clamp of a fused activation in the quantized domain: ReLU6 is [q(0), q(6)] within the
    type's range, with q(v) = zero_point + round(float32(v) / float32(scale))."""
    lo, hi = DTYPE_RANGES[np.dtype(dtype)]

    def q(v):
        ratio = np.float32(v) / np.float32(scale)                  # float32, as TFLite's Quantize
        return zero_point + int(math.floor(abs(ratio) + 0.5)) * (1 if ratio >= 0 else -1)

    if activation == "NONE":
        return lo, hi
    if activation == "RELU":
        return max(lo, q(0.0)), hi
    if activation == "RELU6":
        return max(lo, q(0.0)), min(hi, q(6.0))
    if activation == "RELU_N1_TO_1":
        return max(lo, q(-1.0)), min(hi, q(1.0))
    raise ValueError(f"fused activation {activation} has no quantized form")


def requantize(acc, multiplier, shift, zero_point: int, clamp: tuple[int, int], dtype, ties_up: bool = False):
    """int32 sums to the output type: rescale, add the output zero point, clamp, cast."""
    out = multiply_by_quantized_multiplier(acc, multiplier, shift, ties_up) + zero_point
    return np.clip(out, *clamp).astype(dtype)


# --- the ops ---------------------------------------------------------------------------------

def conv2d_accumulate(x, x_zero_point: int, w, w_zero_point, bias, stride, pad, out_hw):
    """int32 sums of a full conv: sum over taps of (x - zp_x) @ (w - zp_w), plus the bias.
    Padding contributes nothing (TFLite skips taps outside the image, which equals padding
    x with its zero point)."""
    centred = np.asarray(x, np.int64) - x_zero_point
    w = np.asarray(w, np.int64) - np.asarray(w_zero_point, np.int64)
    acc = np.zeros((centred.shape[0], *out_hw, w.shape[3]), np.int64)
    for dy, dx, window in _taps(centred, w.shape[0], stride, pad, out_hw):
        acc += window @ w[dy, dx]
    return acc + np.asarray(bias, np.int64)


def depthwise_conv2d_accumulate(x, x_zero_point: int, w, w_zero_point, bias, stride, pad, out_hw):
    """int32 sums of a depthwise conv (multiplier 1): each channel with its own kernel."""
    centred = np.asarray(x, np.int64) - x_zero_point
    w = np.asarray(w, np.int64) - np.asarray(w_zero_point, np.int64).reshape(-1)
    acc = np.zeros((centred.shape[0], *out_hw, centred.shape[3]), np.int64)
    for dy, dx, window in _taps(centred, w.shape[0], stride, pad, out_hw):
        acc += window * w[dy, dx, :, 0]
    return acc + np.asarray(bias, np.int64)


def fully_connected_accumulate(x, x_zero_point: int, w, w_zero_point, bias):
    """int32 sums of FULLY_CONNECTED: x [N, K] times TFLite's weights [units, K], plus the bias."""
    centred = np.asarray(x, np.int64) - x_zero_point
    w = np.asarray(w, np.int64) - np.asarray(w_zero_point, np.int64).reshape(-1, 1)
    return centred @ w.T + (0 if bias is None else np.asarray(bias, np.int64))


def add_multipliers(a_scale, b_scale, out_scale) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """ADD's three (multiplier, shift): each input's to the common scale (twice the larger input
    scale), and the sum's (lifted by 2^20) to the output scale."""
    a_scale, b_scale, out_scale = (float(np.float32(s)) for s in (a_scale, b_scale, out_scale))
    twice_max = 2.0 * max(a_scale, b_scale)
    return (quantize_multiplier(a_scale / twice_max), quantize_multiplier(b_scale / twice_max),
            quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out_scale)))


def add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point, clamp, dtype):
    """Quantized ADD (V2's residuals): both inputs are lifted by 2^20, rescaled to a common scale
    (twice the larger input scale), summed, and the sum rescaled to the output."""
    (a_mult, a_shift), (b_mult, b_shift), (out_mult, out_shift) = add_multipliers(a_scale, b_scale, out_scale)
    lifted_a = (np.asarray(a, np.int64) - a_zero_point) << ADD_LEFT_SHIFT
    lifted_b = (np.asarray(b, np.int64) - b_zero_point) << ADD_LEFT_SHIFT
    total = (multiply_by_quantized_multiplier(lifted_a, a_mult, a_shift)
             + multiply_by_quantized_multiplier(lifted_b, b_mult, b_shift))
    return requantize(total, out_mult, out_shift, out_zero_point, clamp, dtype)


def average_pool(x, filter_hw, stride_hw, pad, out_hw, clamp, dtype):
    """AVERAGE_POOL_2D: the mean of the window's pixels *inside* the image (padding is not
    counted), rounded half away from zero by integer division, clamped.  Scale and zero point
    pass through unchanged."""
    x = np.asarray(x, np.int64)
    n, h, w, c = x.shape
    top, _, left, _ = pad
    out = np.zeros((n, *out_hw, c), np.int64)
    for oy in range(out_hw[0]):
        y0 = max(oy * stride_hw[0] - top, 0)
        y1 = min(oy * stride_hw[0] - top + filter_hw[0], h)
        for ox in range(out_hw[1]):
            x0 = max(ox * stride_hw[1] - left, 0)
            x1 = min(ox * stride_hw[1] - left + filter_hw[1], w)
            count = (y1 - y0) * (x1 - x0)
            total = x[:, y0:y1, x0:x1, :].sum(axis=(1, 2))
            # (total +- count / 2) / count, truncated toward zero: round half away from zero
            rounded = np.where(total >= 0, (total + count // 2) // count,
                               -((-total + count // 2) // count))
            out[:, oy, ox, :] = rounded
    return np.clip(out, *clamp).astype(dtype)


def mean_hw(x, in_scale, in_zero_point, out_scale, out_zero_point, dtype):
    """MEAN over H and W (a global average pool written as MEAN): the sum of (x - zp), times
    in_scale / out_scale / count folded into one fixed-point multiplier (reduce.h)."""
    x = np.asarray(x, np.int64)
    count = x.shape[1] * x.shape[2]
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    # Fold 1/count into the multiplier: shift it up by floor(log2 count) bits, divide (truncating).
    bits = min(count.bit_length() - 1, 32, 31 + shift)
    multiplier = (multiplier << bits) // count
    shift -= bits
    centred_sum = x.sum(axis=(1, 2)) - in_zero_point * count
    return requantize(centred_sum, multiplier, shift, out_zero_point, DTYPE_RANGES[np.dtype(dtype)], dtype)


def mean_hw_optimized(x, in_scale, in_zero_point, out_scale, out_zero_point, dtype):
    """MEAN over H and W as LiteRT's *optimized* kernel computes it (it differs from ``mean_hw``
    by one step on about 15 % of outputs): the raw sum times one multiplier for
    in_scale / (count * out_scale) (a float32 quotient), ties rounded up, plus a bias
    out_zp - round(in_zp * in_scale / out_scale) computed in float32."""
    x = np.asarray(x, np.int64)
    count = x.shape[1] * x.shape[2]
    in_scale, out_scale = np.float32(in_scale), np.float32(out_scale)
    multiplier, shift = quantize_multiplier(float(in_scale / (np.float32(count) * out_scale)))
    offset = np.float32(in_zero_point) * in_scale / out_scale
    bias = out_zero_point - int(offset + np.float32(0.5) if offset > 0 else offset - np.float32(0.5))
    return requantize(x.sum(axis=(1, 2)), multiplier, shift, bias, DTYPE_RANGES[np.dtype(dtype)], dtype, ties_up=True)


def quantize(x, scale: float, zero_point: int, dtype):
    """QUANTIZE from float32: zero_point + round(x / scale), the division in float32, halves away
    from zero, clamped to the type."""
    ratio = np.asarray(x, np.float32) / np.float32(scale)
    rounded = np.sign(ratio) * np.floor(np.abs(ratio) + np.float32(0.5))
    return np.clip(rounded.astype(np.int64) + zero_point, *DTYPE_RANGES[np.dtype(dtype)]).astype(dtype)


def requantize_tensor(x, in_scale, in_zero_point, out_scale, out_zero_point, dtype):
    """QUANTIZE from an integer type (e.g. int8 -> uint8, or to a new scale): one fixed-point
    rescale by in_scale / out_scale."""
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    centred = np.asarray(x, np.int64) - in_zero_point
    return requantize(centred, multiplier, shift, out_zero_point, DTYPE_RANGES[np.dtype(dtype)], dtype)


def dequantize(q, scale: float, zero_point: int):
    """DEQUANTIZE: float32(scale * (q - zero_point)), computed in double as TFLite does."""
    return (float(np.float32(scale)) * (np.asarray(q, np.float64) - zero_point)).astype(np.float32)
