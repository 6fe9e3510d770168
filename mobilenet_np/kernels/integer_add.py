"""The quantized ADD (XNNPACK's and LiteRT's reference one) and XNNPACK's global average pool in
Numba (the twins: ``integer_xnnpack.add``, ``integer_reference.add`` and
``integer_xnnpack.global_average``, which the tests compare byte for byte).

* ADD: ``add_params`` derives XNNPACK's two integer multipliers, the bias (zero points and the
  rounding half folded in) and the shift from the scales, once per op; ``add_bytes`` is then one
  pass over the elements: bias + a * m_a + b * m_b in int64, arithmetic shift, clamp, zero point.
* Global average: per image and channel, the int64 sum over the map less count * zero point,
  times one float32 scale, clamped, rounded to nearest even -- in float32, as XNNPACK.

* Reference ADD (the "reference" and "optimized" kernel sets): ``add_reference_bytes`` does
  ``integer_reference.add`` element by element: both inputs lifted by 2^20 and rescaled with
  TFLite's fixed-point multiply (the doubling high multiply, then a rounding right shift), summed,
  rescaled to the output, clamped.  The NumPy twin took ~0.5 ms per ADD of V2 0.5/96 at batch 1.

Both ADDs depend on the inputs less their zero points only, so they run on int8 values held as
uint8 + 128 with every zero point and clamp + 128 (``forward/quantized_engine.py``).

These replace NumPy passes that allocate several int64 temporaries per op (V2 has ten ADDs).
"""

from __future__ import annotations

import numpy as np

from .integer_reference import ADD_LEFT_SHIFT, INT32_MAX, INT32_MIN, add_multipliers
from .integer_xnnpack import ADD_MULTIPLIER_BITS
from .jit import kernel


def add_params(a_scale, a_zero_point, b_scale, b_zero_point, out_scale) -> tuple[int, int, int, int]:
    """(m_a, m_b, bias, shift) exactly as ``integer_xnnpack.add`` derives them."""
    ratio_a = np.float32(a_scale) / np.float32(out_scale)
    ratio_b = np.float32(b_scale) / np.float32(out_scale)
    exponent = int(np.frexp(max(abs(ratio_a), abs(ratio_b)))[1]) - 1
    shift = ADD_MULTIPLIER_BITS - exponent
    m_a = int(np.rint(ratio_a * np.float32(2.0 ** shift)))
    m_b = int(np.rint(ratio_b * np.float32(2.0 ** shift)))
    bias = (1 << (shift - 1)) - m_a * a_zero_point - m_b * b_zero_point
    return m_a, m_b, bias, shift


@kernel()
def add_bytes(a, b, m_a, m_b, bias, shift, lo, hi, zero_point, out):
    """out = clamp((bias + a * m_a + b * m_b) >> shift, lo - zp, hi - zp) + zp, flat arrays."""
    for i in range(a.size):
        v = (bias + np.int64(a[i]) * m_a + np.int64(b[i]) * m_b) >> shift
        v = min(max(v, lo - zero_point), hi - zero_point)
        out[i] = v + zero_point


@kernel()
def global_average_bytes(x, n_img, pixels, c, zero_point, scale, lo, hi, out_zero_point, out):
    """out [n, c] = rint(clamp(float32(sum over the map - pixels * zp) * scale)) + out zp (x flat [n, pixels, c])."""
    low = np.float32(lo - out_zero_point)
    high = np.float32(hi - out_zero_point)
    for n in range(n_img):
        for ch in range(c):
            total = np.int64(0)
            for p in range(pixels):
                total += np.int64(x[(n * pixels + p) * c + ch])
            value = np.float32(total - pixels * zero_point) * scale
            value = min(max(value, low), high)
            out[n * c + ch] = np.int64(np.rint(value)) + out_zero_point


class Add:
    """XNNPACK's ADD of same-shape inputs with ``params = add_params(...)``, the clamp and the zero
    point bound once: ``Add(...)(a, b, out)``."""

    kernel = staticmethod(add_bytes)     # (a dispatcher as a plain class attribute would bind as a method)

    def __init__(self, params, clamp, out_zero_point):
        m_a, m_b, bias, shift = params
        self.args = (m_a, m_b, bias, shift, clamp[0], clamp[1], out_zero_point)

    def __call__(self, a, b, out):
        flat_a, flat_b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
        self.kernel(flat_a, flat_b, *self.args, out.reshape(-1))
        return out

    def calls(self, a, b, out):
        """``__call__`` as [(compiled function, arguments)] for the same arrays every time (the fast
        graph's plan); None if an input is not C-contiguous."""
        if not (a.flags.c_contiguous and b.flags.c_contiguous):
            return None
        return [(self.kernel, (a.reshape(-1), b.reshape(-1), *self.args, out.reshape(-1)))]


@kernel()
def _scaled(x, multiplier, shift):
    """``integer_reference.multiply_by_quantized_multiplier`` of one int64 value (rounding ties away from
    zero): left shift, doubling high multiply (saturating at -2^31 * -2^31), rounding right shift."""
    x = x << max(shift, 0)
    if x == INT32_MIN and multiplier == INT32_MIN:
        high = np.int64(INT32_MAX)
    else:
        total = x * multiplier + ((1 << 30) if x * multiplier >= 0 else 1 - (1 << 30))
        high = total >> 31 if total >= 0 else -((-total) >> 31)
    right = max(-shift, 0)
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


@kernel()
def add_reference_bytes(a, b, a_zero_point, b_zero_point, a_mult, a_shift, b_mult, b_shift, out_mult, out_shift,
                        lo, hi, zero_point, out):
    """out = clamp(scaled(scaled((a - zp_a) << 20) + scaled((b - zp_b) << 20)) + zp), flat arrays
    (``integer_reference.add``)."""
    for i in range(a.size):
        total = (_scaled((np.int64(a[i]) - a_zero_point) << ADD_LEFT_SHIFT, a_mult, a_shift)
                 + _scaled((np.int64(b[i]) - b_zero_point) << ADD_LEFT_SHIFT, b_mult, b_shift))
        v = _scaled(total, out_mult, out_shift) + zero_point
        out[i] = min(max(v, lo), hi)


class ReferenceAdd(Add):
    """LiteRT's reference ADD of same-shape inputs (scales and zero points bound once):
    ``ReferenceAdd(...)(a, b, out)``, as ``Add``."""

    kernel = staticmethod(add_reference_bytes)

    def __init__(self, scales, zero_points, clamp, out_zero_point):
        (a_mult, a_shift), (b_mult, b_shift), (out_mult, out_shift) = add_multipliers(*scales)
        self.args = (*zero_points, a_mult, a_shift, b_mult, b_shift, out_mult, out_shift, clamp[0], clamp[1],
                     out_zero_point)


def add(a, b, params, clamp, out_zero_point, out):
    """XNNPACK's ADD of same-shape a and b into ``out`` (C-contiguous; ``params = add_params(...)``)."""
    return Add(params, clamp, out_zero_point)(a, b, out)


class GlobalAverage:
    """XNNPACK's pool over the whole map of x [N, H, W, C] into N * C values, the scale worked out
    once: ``GlobalAverage(x.shape, ...)(x, out)``."""

    def __init__(self, x_shape, in_scale, in_zero_point, out_scale, out_zero_point, clamp):
        n, h, w, c = x_shape
        scale = np.float32(in_scale) / (np.float32(out_scale) * np.float32(h * w))
        self.args = (n, h * w, c, in_zero_point, scale, clamp[0], clamp[1], out_zero_point)

    def __call__(self, x, out):
        global_average_bytes(np.ascontiguousarray(x).reshape(-1), *self.args, out.reshape(-1))
        return out

    def calls(self, x, out):
        """As ``Add.calls``."""
        return [(global_average_bytes, (x.reshape(-1), *self.args, out.reshape(-1)))] if x.flags.c_contiguous else None


def global_average(x, in_scale, in_zero_point, out_scale, out_zero_point, clamp, out):
    """XNNPACK's pool over the whole map: x [N, H, W, C] -> out [N, C] (any C-contiguous shape of N * C values)."""
    return GlobalAverage(x.shape, in_scale, in_zero_point, out_scale, out_zero_point, clamp)(x, out)
