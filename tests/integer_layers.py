"""Test-side 1x1 integer layers with their reference output bytes, for the kernels' tests
(``test_integer_kernels``, ``test_integer_dot4``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mobilenet_np.kernels import integer_reference as iref
from mobilenet_np.kernels import integer_xnnpack as ixnn


def pointwise_layer(rng, pixels: int, c_in: int, c_out: int, dtype, rounding: str, w_low: int | None = None,
                    first_weight: int | None = None) -> SimpleNamespace:
    """Seeded inputs, weights and parameters of a 1x1 layer as the files have them: uint8 with
    per-tensor zero points (the QAT files), int8 with per-channel scales (the converter's); the
    weights drawn from ``w_low`` (default: the type's lowest) up, w[0, 0] set to ``first_weight``
    if given; ``want``: the reference's output bytes under ``rounding`` (one of LiteRT's three)."""
    lo, hi = iref.DTYPE_RANGES[np.dtype(dtype)]
    per_tensor = dtype == np.uint8
    x = rng.integers(lo, hi, (pixels, c_in), endpoint=True).astype(dtype)
    w = rng.integers(lo if w_low is None else w_low, hi, (c_in, c_out), endpoint=True).astype(dtype)
    if first_weight is not None:
        w[0, 0] = first_weight
    w_zero_point = 131 if per_tensor else np.zeros(c_out, np.int64)
    x_zero_point = 117 if per_tensor else -5
    bias = rng.integers(-30000, 30000, c_out).astype(np.int32)
    filter_scales = rng.uniform(0.001, 0.02, 1 if per_tensor else c_out)
    multiplier, shift = iref.conv_multipliers(0.02, filter_scales, 0.05, per_tensor)
    clamp = iref.activation_range("RELU6", 0.05, 3 if per_tensor else -120, dtype)
    acc = iref.conv2d_accumulate(x[None, :, None, :], x_zero_point, w[None, None], w_zero_point, bias,
                                 1, (0, 0, 0, 0), (pixels, 1))
    scales = ixnn.conv_scales(0.02, filter_scales, 0.05)
    if rounding == "xnnpack":
        want = ixnn.requantize_fp32(acc, scales, clamp[0], clamp, dtype).reshape(pixels, c_out)
    else:
        want = iref.requantize(acc, multiplier, shift, clamp[0], clamp, dtype,
                               ties_up=rounding == "optimized").reshape(pixels, c_out)
    return SimpleNamespace(x=x, w=w, w_zero_point=w_zero_point, x_zero_point=x_zero_point, bias=bias,
                           multiplier=multiplier, shift=shift, clamp=clamp, scales=scales, want=want)
