"""The integer reference kernels (kernels/integer_reference.py, integer_softmax.py) on hand-worked
cases and on exact arithmetic; whole graphs against LiteRT are in test_quantized_forward.py."""

from fractions import Fraction
import contextlib
import math

import numpy as np
import pytest

from mobilenet_np import spec
from mobilenet_np.kernels import integer_reference as iref
from mobilenet_np.kernels import integer_softmax as isoft
from mobilenet_np.kernels import reference as ref


def round_half_away(value: Fraction) -> int:
    return int(math.copysign(math.floor(abs(value) + Fraction(1, 2)), value))


# --- fixed-point arithmetic ------------------------------------------------------------------

@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)),                    # 0.5 = 2^30 * 2^(0 - 31)
    (1.0, (1 << 30, 1)),                    # frexp(1) = 0.5 * 2^1
    (0.75, (3 << 29, 0)),
    (3.0, (3 << 29, 2)),                    # a multiplier above 1: positive (left) shift
    (1 - 2.0 ** -40, (1 << 30, 1)),         # the significand rounds up to 2^31: renormalised
    (2.0 ** -40, (0, 0)),                   # exponent below -31: zero
    (0.0, (0, 0)),
])
def test_quantize_multiplier_hand_cases(real, expected):
    assert iref.quantize_multiplier(real) == expected


def test_quantize_multiplier_is_within_half_a_step(rng):
    for real in rng.uniform(1e-6, 4.0, 200):
        m, shift = iref.quantize_multiplier(float(real))
        assert 1 << 30 <= m < 1 << 31
        assert abs(Fraction(m) * Fraction(2) ** (shift - 31) - Fraction(float(real))) <= Fraction(2) ** (shift - 32)


def test_doubling_high_mul_is_a_rounded_product(rng):
    """SaturatingRoundingDoublingHighMul(a, b) = floor(a * b / 2^31 + 1/2): ties go up, so
    -1.5 becomes -1; the one overflow (-2^31)^2 saturates."""
    a = rng.integers(iref.INT32_MIN, iref.INT32_MAX, 500, endpoint=True)
    b = rng.integers(iref.INT32_MIN, iref.INT32_MAX, 500, endpoint=True)
    a = np.concatenate([a, [3 << 29, -(3 << 29), 1 << 30, iref.INT32_MIN, iref.INT32_MIN]])
    b = np.concatenate([b, [1 << 31 - 1, 1 << 31 - 1, 3, iref.INT32_MIN, iref.INT32_MAX]])
    got = iref.saturating_rounding_doubling_high_mul(a, b)
    for ai, bi, g in zip(a.tolist(), b.tolist(), got.tolist()):
        if ai == bi == iref.INT32_MIN:
            assert g == iref.INT32_MAX
        else:
            assert g == math.floor(Fraction(ai * bi, 1 << 31) + Fraction(1, 2)), (ai, bi)


def test_rounding_divide_by_pot_rounds_half_away_from_zero(rng):
    x = np.concatenate([rng.integers(-(1 << 31), 1 << 31, 300), [6, -6, 5, -5, 7, -7, 0]])
    for exponent in (0, 1, 2, 5, 13, 31):
        got = iref.rounding_divide_by_pot(x, exponent)
        want = [round_half_away(Fraction(int(v), 1 << exponent)) for v in x.tolist()]
        assert got.tolist() == want


def test_multiply_by_quantized_multiplier_rounds_twice():
    """5 * 0.25 with multiplier 0.5 and a right shift of 1: the doubling high multiply rounds
    2.5 up to 3, the shift rounds 1.5 up to 2 -- TFLite's answer, where one rounding gives 1."""
    assert iref.multiply_by_quantized_multiplier(5, 1 << 30, -1) == 2
    assert iref.multiply_by_quantized_multiplier(100, 1 << 30, 0) == 50
    assert iref.multiply_by_quantized_multiplier(-3, 1 << 30, 0) == -1          # -1.5 rounds up
    assert iref.multiply_by_quantized_multiplier(7, 3 << 29, 2) == 21            # 7 * 0.75 * 4


def test_multiply_by_quantized_multiplier_is_within_one_of_the_real_product(rng):
    x = rng.integers(-(1 << 20), 1 << 20, 300)
    for real in (0.0031, 0.2, 0.99, 1.7):
        m, shift = iref.quantize_multiplier(real)
        exact = [Fraction(int(v)) * m * Fraction(2) ** (shift - 31) for v in x.tolist()]
        got = iref.multiply_by_quantized_multiplier(x, m, shift)
        assert max(abs(g - e) for g, e in zip(got.tolist(), exact)) <= 1


def test_uint8_conv_multiplier_uses_the_float32_product():
    """The legacy uint8 rule multiplies the two scales in float32 first; the int8 rule in double.
    float32 keeps 24 bits and the significand has 31, so the two usually differ (here by 17)."""
    input_scale, filter_scale, output_scale = np.float32(0.064059205), np.float32(0.027708884), np.float32(0.005056379)
    per_tensor = iref.conv_multipliers(input_scale, [filter_scale], output_scale, per_tensor=True)
    per_channel = iref.conv_multipliers(input_scale, [filter_scale], output_scale, per_tensor=False)
    assert (int(per_tensor[0][0]), int(per_tensor[1][0])) == iref.quantize_multiplier(
        float(input_scale * filter_scale) / float(output_scale))
    assert (int(per_channel[0][0]), int(per_channel[1][0])) == iref.quantize_multiplier(
        float(input_scale) * float(filter_scale) / float(output_scale))
    assert per_channel[0][0] - per_tensor[0][0] == 17


@pytest.mark.parametrize("activation, scale, zero_point, dtype, expected", [
    ("RELU6", 6 / 255, 0, np.uint8, (0, 255)),          # q(6) = round(255.00001) = 255
    ("RELU6", 0.05, -128, np.int8, (-128, -8)),         # q(6) = -128 + 120
    ("RELU6", 0.01, 10, np.uint8, (10, 255)),           # q(6) = 610, clipped to the type
    ("RELU", 0.1, -20, np.int8, (-20, 127)),
    ("NONE", 0.1, -20, np.int8, (-128, 127)),
])
def test_activation_range(activation, scale, zero_point, dtype, expected):
    assert iref.activation_range(activation, scale, zero_point, dtype) == expected


# --- convolutions: the integer sums equal the float reference on the centred values ------------

@pytest.mark.parametrize("size", [(7, 7), (9, 6), (8, 11)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels", [(3, 5), (13, 7)])
def test_conv_sums_equal_the_float_reference(rng, size, stride, channels):
    """Sums below 2^24 are exact in float32, so the float reference kernels on (q - zp) must
    give exactly the integer sums (kernel 3, SAME, odd sizes, channels not multiples of 8)."""
    c_in, c_out = channels
    x = rng.integers(0, 256, (2, *size, c_in)).astype(np.uint8)
    w = rng.integers(0, 256, (3, 3, c_in, c_out)).astype(np.uint8)
    bias = rng.integers(-5000, 5000, c_out).astype(np.int32)
    (oh, top, bottom), (ow, left, right) = (spec.same_padding(s, 3, stride) for s in size)
    pad = (top, bottom, left, right)
    got = iref.conv2d_accumulate(x, 117, w, 131, bias, stride, pad, (oh, ow))
    want = ref.conv2d((x.astype(np.float32) - 117), (w.astype(np.float32) - 131), stride, pad, (oh, ow)) + bias
    assert np.array_equal(got, want.astype(np.int64))

    dw = rng.integers(-127, 128, (3, 3, c_in, 1)).astype(np.int8)
    got = iref.depthwise_conv2d_accumulate(x.view(np.int8), -3, dw, np.zeros(c_in, np.int64), bias[:1], stride,
                                           pad, (oh, ow))
    want = ref.depthwise_conv2d(x.view(np.int8).astype(np.float32) + 3, dw.astype(np.float32), stride, pad,
                                (oh, ow)) + bias[0]
    assert np.array_equal(got, want.astype(np.int64))


def test_fully_connected_sums():
    x = np.array([[1, 2, 3]], np.uint8)
    w = np.array([[10, 11, 12], [0, 255, 7]], np.uint8)          # [units, K], TFLite's layout
    got = iref.fully_connected_accumulate(x, 2, w, 10, np.array([100, -100], np.int32))
    # unit 0: (-1)*0 + 0*1 + 1*2 + 100 = 102; unit 1: (-1)*(-10) + 0*245 + 1*(-3) - 100 = -93
    assert got.tolist() == [[102, -93]]


# --- pooling, add, mean, quantize --------------------------------------------------------------

def test_average_pool_counts_only_pixels_inside_the_image():
    x = np.arange(9, dtype=np.uint8).reshape(1, 3, 3, 1) * 10       # 0 10 20 / 30 40 50 / 60 70 80
    out = iref.average_pool(x, (2, 2), (2, 2), (0, 1, 0, 1), (2, 2), (0, 255), np.uint8)
    # windows: {0,10,30,40} -> 20; {20,50} -> 35; {60,70} -> 65; {80} -> 80
    assert out[0, :, :, 0].tolist() == [[20, 35], [65, 80]]
    y = np.array([-3, -2, 1, 2], np.int8).reshape(1, 2, 2, 1)        # sum -2, count 4: -0.5 -> -1
    assert iref.average_pool(y, (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), (-128, 127), np.int8).item() == -1


def test_add_rescales_both_inputs():
    """Equal input scales 0.1, output scale 0.2: every fixed-point step is exact, so the result is
    the real sum / 0.2 rounded half away from zero."""
    a = np.array([10, 20, 100, -100, -10], np.int8)
    b = np.array([5, -20, 90, -100, -5], np.int8)
    out = iref.add(a, 0.1, 0, b, 0.1, 0, 0.2, 0, (-128, 127), np.int8)
    # 1.5 / 0.2 = 7.5 -> 8;  0;  19 / 0.2 = 95;  -20 / 0.2 = -100;  -1.5 / 0.2 = -7.5 -> -8
    assert out.tolist() == [8, 0, 95, -100, -8]
    # zero points: a real 0 on both sides stays at the output zero point; clamped to the range
    assert iref.add(np.array([7], np.uint8), 0.1, 7, np.array([200], np.uint8), 0.05, 200,
                    0.2, 128, (0, 255), np.uint8).tolist() == [128]
    assert iref.add(np.array([127], np.int8), 0.5, 0, np.array([127], np.int8), 0.5, 0,
                    0.1, 0, (-128, 127), np.int8).tolist() == [127]


def test_mean_over_height_and_width():
    x = np.array([1, 2, 3, 4], np.int8).reshape(1, 2, 2, 1)
    assert iref.mean_hw(x, 0.5, 0, 0.5, 0, np.int8).item() == 3             # 2.5 -> 3
    assert iref.mean_hw(-x, 0.5, 0, 0.5, 0, np.int8).item() == -3           # -2.5 -> -3
    constant = np.full((2, 3, 3, 5), 7, np.int8)                             # 9 pixels: 1/9 is inexact
    assert np.all(iref.mean_hw(constant, 0.5, 2, 0.5, 2, np.int8) == 7)
    # a different output scale: mean of (q - 2) * 0.5 = 2.5, over 0.25 -> 10, plus zero point -1
    assert np.all(iref.mean_hw(constant, 0.5, 2, 0.25, -1, np.int8) == 9)


def test_optimized_kernels_round_ties_up():
    """LiteRT's optimized kernels: the rounding shift sends ties toward +infinity, and MEAN takes
    one multiplier for scale / count.  Mean of -1..-4 is -2.5: the reference gives -3, they -2."""
    assert iref.rounding_divide_by_pot(np.array([6, -6, -7, -5]), 2, ties_up=True).tolist() == [2, -1, -2, -1]
    assert iref.rounding_divide_by_pot(np.array([6, -6, -7, -5]), 2).tolist() == [2, -2, -2, -1]
    x = np.array([1, 2, 3, 4], np.int8).reshape(1, 2, 2, 1)
    assert iref.mean_hw_optimized(x, 0.5, 0, 0.5, 0, np.int8).item() == 3
    assert iref.mean_hw_optimized(-x, 0.5, 0, 0.5, 0, np.int8).item() == -2
    assert iref.mean_hw(-x, 0.5, 0, 0.5, 0, np.int8).item() == -3
    # the zero point goes into a float32 bias: 7s with zero point 2 and equal scales stay 7
    assert np.all(iref.mean_hw_optimized(np.full((1, 3, 3, 4), 7, np.int8), 0.5, 2, 0.5, 2, np.int8) == 7)


def test_xnnpack_requantizes_in_float32_and_adds_with_its_own_multipliers():
    """XNNPACK: float32(sum) * scale rounded half to even; ADD with 21-bit multipliers and one
    arithmetic shift, ties up.  -1.5 / 0.2 = -7.5 is -7 there, -8 in TFLite's reference."""
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    got = ixnn.requantize_fp32(np.array([5, 7, -5, 1000]), np.float32(0.5), 0, (-128, 127), np.int8)
    assert got.tolist() == [2, 4, -2, 127]
    a, b = np.array([10, -10, 100], np.int8), np.array([5, -5, 90], np.int8)
    assert ixnn.add(a, 0.1, 0, b, 0.1, 0, 0.2, 0, (-128, 127), np.int8).tolist() == [8, -7, 95]
    assert iref.add(a, 0.1, 0, b, 0.1, 0, 0.2, 0, (-128, 127), np.int8).tolist() == [8, -8, 95]


def test_quantize_requantize_dequantize():
    x = np.array([0.0, 0.125, -0.125, 0.375, 100.0], np.float32)
    assert iref.quantize(x, 0.25, 3, np.int8).tolist() == [3, 4, 2, 5, 127]   # halves away from zero
    assert iref.dequantize(np.array([3, 4, -128], np.int8), 0.25, 3).tolist() == [0.0, 0.25, -32.75]
    q = np.array([-128, 0, 127], np.int8)
    assert iref.requantize_tensor(q, 0.5, -128, 0.5, 0, np.uint8).tolist() == [0, 128, 255]
    assert iref.requantize_tensor(q, 0.5, 0, 1.0, 0, np.int8).tolist() == [-64, 0, 64]    # 63.5 -> 64


# --- softmax -------------------------------------------------------------------------------------

def test_softmax_of_equal_logits_is_uniform():
    """Four equal inputs: exp(0) = 1 in Q0.31, each 2^19 in the Q12.19 sum 2^21, so every
    probability is 1/4 = 64/256 (and -128 + 64 for int8)."""
    assert isoft.softmax(np.full((1, 4), 9, np.uint8), 1.0, 0.1, np.uint8).tolist() == [[64] * 4]
    assert isoft.softmax(np.full((1, 4), -9, np.int8), 1.0, 0.1, np.int8).tolist() == [[-64] * 4]


def test_fixed_point_exp_and_reciprocal():
    a = np.linspace(-31.9, 0, 400)
    raw = np.round(a * (1 << 26)).astype(np.int64)                       # Q5.26
    got = isoft.exp_on_negative_values(raw) / 2.0 ** 31
    # a 4th-order polynomial on [-1/4, 0): its truncation error, (1/8)^5 / 120 ~ 2.5e-7, dominates
    assert np.max(np.abs(got - np.exp(raw / 2.0 ** 26))) < 3e-7
    x = np.linspace(0, 0.999, 300)
    raw = np.round(x * 2.0 ** 31).astype(np.int64)
    got = isoft.one_over_one_plus_x(raw) / 2.0 ** 31
    assert np.max(np.abs(got - 1 / (1 + raw / 2.0 ** 31))) < 1e-8


def test_softmax_is_within_one_step_of_the_real_softmax(rng):
    x = rng.integers(0, 256, (6, 1001)).astype(np.uint8)
    scale = 0.1464572
    got = isoft.softmax(x, 1.0, scale, np.uint8).astype(np.float64)
    z = (x.astype(np.float64) - x.max(axis=1, keepdims=True)) * np.float64(np.float32(scale))
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) * 256
    assert np.max(np.abs(got - np.clip(want, 0, 255))) <= 1.0



def test_fast_softmax_reciprocal_equals_the_array_version(rng):
    """The Python-int reciprocal of one row against the twin's array arithmetic, over [0, 1) in
    Q0.31 (the ends, and 20,000 random values)."""
    x = np.concatenate([[0, 1, 2, (1 << 30) - 1, 1 << 30, (1 << 31) - 2, (1 << 31) - 1],
                        rng.integers(0, 1 << 31, 20000)]).astype(np.int64)
    want = isoft.one_over_one_plus_x(x)
    assert [isoft.one_over_one_plus_x_int(int(v)) for v in x] == want.tolist()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(1, 1001), (3, 7), (2, 1, 1, 5), (5, 1), (1, 4096)])
def test_fast_softmax_equals_the_twin(rng, dtype, shape):
    """``Softmax`` against ``softmax`` byte for byte: odd lengths, leading dimensions, scales
    from tiny (every difference kept, probabilities spread) to large (most differences cut off
    by the smallest kept difference), beta != 1, and extreme rows: all equal, one maximum among
    minima, the two extremes alternating, random."""
    lo, hi = iref.DTYPE_RANGES[np.dtype(dtype)]
    rows = [rng.integers(lo, hi, shape, endpoint=True), np.full(shape, lo), np.full(shape, hi),
            np.where(np.arange(shape[-1]) % 2 == 0, lo, hi) + np.zeros(shape, np.int64)]
    spike = np.full(shape, lo)
    spike[..., shape[-1] // 2] = hi
    rows.append(spike)
    for beta, scale in [(1.0, 0.1464572), (1.0, 1e-4), (1.0, 0.9), (1.0, 12.5), (0.7, 0.05), (2.0, 0.3)]:
        fast = isoft.Softmax(beta, scale, dtype)
        for x in rows:
            x = x.astype(dtype)
            want = isoft.softmax(x, beta, scale, dtype)
            got = fast(x)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want), (beta, scale, x.ravel()[:8])


def test_fast_softmax_hands_other_types_to_the_twin():
    x = np.array([[3, -200, 70]], np.int16)
    assert np.array_equal(isoft.Softmax(1.0, 0.1, np.uint8)(x), isoft.softmax(x, 1.0, 0.1, np.uint8))

# --- the Numba integer 1x1 kernel against the reference ------------------------------------------

@pytest.mark.parametrize("pixels, c_in, c_out", [(1, 1, 1), (7, 5, 13), (9, 16, 32), (37, 17, 40), (25, 160, 1001), (37, 128, 40), (25, 64, 17),
                                                     (11, 135, 24), (13, 16, 8), (6, 20, 20), (5, 6, 18)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("rounding", ["reference", "optimized", "xnnpack"])
def test_integer_pointwise_kernel_equals_the_reference(rng, pixels, c_in, c_out, dtype, rounding):
    """uint8 with per-tensor zero points (the QAT files), int8 with per-channel scales; odd pixel
    counts (the 4-pixel tiles and the single-pixel rest), odd C_in (135: centred 16 at a time, then
    one by one), C_out not multiples of 16 (the padded rows copied out 8, 4, 2 or 1 bytes at a time: 24 / 8, 20, 18, 13);
    each of LiteRT's three requantizations."""
    from integer_layers import pointwise_layer

    from mobilenet_np.kernels import integer_gemm as ig

    layer = pointwise_layer(rng, pixels, c_in, c_out, dtype, rounding)
    x, w, w_zero_point, x_zero_point, want = layer.x, layer.w, layer.w_zero_point, layer.x_zero_point, layer.want
    bias, multiplier, shift, clamp, scales = layer.bias, layer.multiplier, layer.shift, layer.clamp, layer.scales
    params = ig.requantization_params(bias, multiplier, shift, c_out)
    got = ig.pointwise_conv2d(x, x_zero_point, ig.pack_pairs(w, w_zero_point), params, c_out, clamp[0], clamp,
                              np.empty((pixels, c_out), dtype), rounding, ig.xnnpack_scales(scales, c_out))
    assert np.array_equal(got, want)
    if want.size > 50:
        assert len(np.unique(want)) > 2        # not all clamped: the requantization was exercised


@pytest.mark.parametrize("size, stride, channels", [((7, 7), 1, 5), ((9, 6), 2, 13), ((8, 11), 2, 40),
                                                    ((10, 10), 1, 64), ((5, 5), 1, 1), ((3, 2), 2, 9),
                                                    ((2, 9), 1, 24), ((6, 9), 1, 19), ((5, 13), 2, 21),
                                                    ((1, 3), 1, 16), ((4, 3), 2, 8), ((3, 1), 1, 8),
                                                    ((5, 7), 1, 9), ((7, 5), 1, 12)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("rounding", ["reference", "optimized", "xnnpack"])
def test_integer_depthwise_kernel_equals_the_reference(rng, size, stride, channels, dtype, rounding):
    """Odd and non-square sizes, both strides (so SAME pads (1, 1) and (0, 1)), channel counts
    not multiples of 8, maps too small for any interior column or row (3 x 2, 2 x 9, 1 x 3),
    both types, each of LiteRT's three requantizations.  The kernel's blocks of four pixels:
    interiors whose width is not a multiple of four (the last block moved back: 7 and 5 wide at
    stride 1, 5 at stride 2), a channel tail inside the blocks (19, 21), interiors narrower
    than a block (1 and 3 wide at stride 1, 2 at stride 2), padding on both sides of a single
    column or row (3 x 1, 1 x 3) and beside a lone pixel at stride 2 (4 x 3)."""
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_gemm as ig
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    lo, hi = iref.DTYPE_RANGES[np.dtype(dtype)]
    per_tensor = dtype == np.uint8
    x = rng.integers(lo, hi, (2, *size, channels), endpoint=True).astype(dtype)
    w = rng.integers(lo, hi, (3, 3, channels, 1), endpoint=True).astype(dtype)
    w_zero_point = 131 if per_tensor else np.zeros(channels, np.int64)
    x_zero_point = 117 if per_tensor else -5
    bias = rng.integers(-3000, 3000, channels).astype(np.int32)
    filter_scales = rng.uniform(0.001, 0.02, 1 if per_tensor else channels)
    multiplier, shift = iref.conv_multipliers(0.02, filter_scales, 0.05, per_tensor)
    (oh, top, bottom), (ow, left, right) = (spec.same_padding(s, 3, stride) for s in size)
    pad = (top, bottom, left, right)
    clamp = iref.activation_range("RELU6", 0.05, 3 if per_tensor else -120, dtype)
    acc = iref.depthwise_conv2d_accumulate(x, x_zero_point, w, w_zero_point, bias, stride, pad, (oh, ow))
    scales = ixnn.conv_scales(0.02, filter_scales, 0.05)
    if rounding == "xnnpack":
        want = ixnn.requantize_fp32(acc, scales, clamp[0], clamp, dtype)
    else:
        want = iref.requantize(acc, multiplier, shift, clamp[0], clamp, dtype, ties_up=rounding == "optimized")
    got = idw.depthwise_conv2d(x, x_zero_point, idw.pack_depthwise(w, w_zero_point), 3, stride, pad, (oh, ow),
                               ig.requantization_params(bias, multiplier, shift, channels), clamp[0], clamp,
                               np.empty(want.shape, dtype), rounding, ig.xnnpack_scales(scales, channels))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("size, stride, pad", [((7, 9), 1, None), ((9, 6), 2, None), ((8, 11), 2, None),
                                               ((1, 3), 1, None), ((3, 1), 2, None), ((2, 2), 1, None),
                                               ((9, 11), 1, (0, 0, 0, 0)), ((9, 11), 2, (2, 1, 2, 0)),
                                               ((9, 11), 1, (1, 2, 0, 2))])
@pytest.mark.parametrize("channels", [16, 48])
@pytest.mark.parametrize("weights", ["int8", "split", "wide"])
@pytest.mark.parametrize("rounding", ["reference", "optimized", "xnnpack"])
def test_integer_depthwise4_equals_the_reference(rng, monkeypatch, size, stride, pad, channels, weights, rounding):
    """The 3 x 3 depthwise on four-byte dot products (``integer_depthwise4``; forced where the
    CPU lacks VNNI, whose ``dot4`` is then portable IR): odd sizes, both strides, SAME, VALID and
    wider padding, maps with no interior pixel; weights that fit int8 once centred, weights that
    need the split form (uint8 bytes on zero point 131), and weights 255 above a zero point of 0,
    which no split fits (the widening kernel runs them)."""
    from mobilenet_np import spec
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_depthwise4 as idw4
    from mobilenet_np.kernels import integer_gemm as ig
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    monkeypatch.setattr(idw4, "usable", lambda k, c: k == 3 and c % 16 == 0)
    x = rng.integers(0, 256, (2, *size, channels), endpoint=True).astype(np.uint8)
    w_zp, (w_lo, w_hi) = {"int8": (131, (31, 231)), "split": (131, (0, 255)), "wide": (0, (0, 255))}[weights]
    w = rng.integers(w_lo, w_hi, (3, 3, channels, 1), endpoint=True).astype(np.uint8)
    w[1, 1, 0, 0], w[0, 2, 1, 0] = w_hi, w_lo             # the extremes that decide the form
    if pad is None:
        (oh, top, bottom), (ow, left, right) = (spec.same_padding(s, 3, stride) for s in size)
        pad = (top, bottom, left, right)
    else:
        oh, ow = ((n + a + b - 3) // stride + 1 for n, a, b in ((size[0], *pad[:2]), (size[1], *pad[2:])))
    bias = rng.integers(-3000, 3000, channels).astype(np.int32)
    multiplier, shift = iref.conv_multipliers(0.02, np.array([0.004]), 0.05, True)
    clamp = (3, 250)
    acc = iref.depthwise_conv2d_accumulate(x, 117, w, w_zp, bias, stride, pad, (oh, ow))
    scales = ixnn.conv_scales(0.02, np.array([0.004]), 0.05)
    if rounding == "xnnpack":
        want = ixnn.requantize_fp32(acc, scales, 3, clamp, np.uint8)
    else:
        want = iref.requantize(acc, multiplier, shift, 3, clamp, np.uint8, ties_up=rounding == "optimized")
    kernel = idw.Depthwise(x.shape, 117, idw.pack_depthwise(w, w_zp), 3, stride, pad, (oh, ow),
                           ig.requantization_params(bias, multiplier, shift, channels), 3, clamp, rounding,
                           ig.xnnpack_scales(scales, channels), dtype=x.dtype)
    assert kernel.rows_kernel is (idw.depthwise_rows if weights == "wide" else idw4.depthwise4_rows)
    assert (kernel.args[3].size * 2 == channels // 16 * 4 * idw4.GROUP) is (weights == "split")      # the form
    got = kernel(x, np.empty(want.shape, np.uint8))
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]
    if want.size > 200:
        assert len(np.unique(want)) > 20       # the requantization was exercised, not clamped away


def test_integer_depthwise4_packing():
    """``pack_taps``: per block of 16 channels one vector per window column, its rows in bytes 0-2 of
    each channel's lane (byte 3 zero); the split form's s per channel after them, with every centred
    weight minus s inside int8."""
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_depthwise4 as idw4

    w = (np.arange(9 * 32).reshape(3, 3, 32, 1) % 200 + 20).astype(np.uint8)
    for zp, split in ((100, False), (0, True)):
        groups, got_split = idw4.pack_taps(idw.pack_depthwise(w, zp), 32)
        assert got_split is split
        g = groups.view(np.int8).reshape(2, 4 if split else 3, 16, 4).astype(np.int32)
        centred = w[:, :, :, 0].astype(np.int32) - zp                     # [dy, dx, c]
        s = g[:, 3, :, 0].reshape(32) if split else np.zeros(32, np.int32)
        columns = g[:, :3, :, :3].transpose(3, 1, 0, 2).reshape(3, 3, 32)   # [dy, dx, c]
        assert np.array_equal(columns + s, centred)
        assert not g[:, :, :, 3].any()
        if split:
            assert np.all(g[:, 3, :, :3] == g[:, 3, :, :1]) and s.any()


@pytest.mark.parametrize("pad", [(0, 0, 0, 0), (2, 1, 2, 0), (1, 2, 0, 2)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 2])
def test_integer_depthwise_kernel_other_paddings(rng, pad, stride, k):
    """VALID (no padding) and padding wider than one column or row, which SAME never gives a
    3 x 3 window: the blocks whose inner columns would leave the image take the checked path;
    a 2 x 2 window (every pixel on the checked path)."""
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_gemm as ig

    x = rng.integers(0, 256, (2, 9, 11, 13), endpoint=True).astype(np.uint8)
    w = rng.integers(0, 256, (k, k, 13, 1), endpoint=True).astype(np.uint8)
    bias = rng.integers(-3000, 3000, 13).astype(np.int32)
    out_hw = ((9 + pad[0] + pad[1] - k) // stride + 1, (11 + pad[2] + pad[3] - k) // stride + 1)
    multiplier, shift = iref.conv_multipliers(0.02, np.array([0.01]), 0.05, True)
    acc = iref.depthwise_conv2d_accumulate(x, 117, w, 131, bias, stride, pad, out_hw)
    want = iref.requantize(acc, multiplier, shift, 3, (0, 255), np.uint8)
    got = idw.depthwise_conv2d(x, 117, idw.pack_depthwise(w, 131), k, stride, pad, out_hw,
                               ig.requantization_params(bias, multiplier, shift, 13), 3, (0, 255),
                               np.empty(want.shape, np.uint8))
    assert np.array_equal(got, want)
    assert len(np.unique(want)) > 2


@pytest.mark.parametrize("size, k, stride, channels, c_out", [((7, 7), 3, 2, 3, 16), ((9, 6), 3, 1, 3, 13),
                                                              ((8, 11), 3, 2, 5, 40), ((5, 5), 3, 1, 1, 1),
                                                              ((160, 160), 3, 2, 3, 16), ((6, 7), 3, 2, 16, 8),
                                                              ((9, 8), 5, 2, 2, 17), ((7, 6), 1, 2, 3, 16)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("rounding", ["reference", "optimized", "xnnpack"])
def test_integer_full_conv_kernel_equals_the_reference(rng, size, k, stride, channels, c_out, padding, dtype, rounding):
    """The full convolution (the stem: the input centred into a padded buffer, patches read in place):
    odd and non-square sizes, both strides, SAME (padding on every side, or only after) and VALID (none:
    the images centred in one call), patch rows of an odd k * C (9, 15, 3: a zero weight after each) and an
    even one (10, 48), C_out not a multiple of 16 and over one panel, 4-pixel tiles across two output
    rows and past a task's end (the 160 x 160 case: 3200 pixels, tasks of 32), both types, each
    requantization."""
    from mobilenet_np.kernels import integer_conv as iconv
    from mobilenet_np.kernels import integer_gemm as ig
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    lo, hi = iref.DTYPE_RANGES[np.dtype(dtype)]
    per_tensor = dtype == np.uint8
    x = rng.integers(lo, hi, (2, *size, channels), endpoint=True).astype(dtype)
    w = rng.integers(lo, hi, (c_out, k, k, channels), endpoint=True).astype(dtype)       # TFLite OHWI
    w_zero_point = 131 if per_tensor else np.zeros(c_out, np.int64)
    x_zero_point = 117 if per_tensor else -5
    bias = rng.integers(-3000, 3000, c_out).astype(np.int32)
    filter_scales = rng.uniform(0.001, 0.02, 1 if per_tensor else c_out)
    multiplier, shift = iref.conv_multipliers(0.02, filter_scales, 0.05, per_tensor)
    if padding == "SAME":
        (oh, top, bottom), (ow, left, right) = (spec.same_padding(s, k, stride) for s in size)
    else:
        (oh, ow), top, bottom, left, right = ((s - k) // stride + 1 for s in size), 0, 0, 0, 0
    pad = (top, bottom, left, right)
    clamp = iref.activation_range("RELU6", 0.05, 3 if per_tensor else -120, dtype)
    acc = iref.conv2d_accumulate(x, x_zero_point, w.transpose(1, 2, 3, 0), w_zero_point, bias, stride, pad, (oh, ow))
    scales = ixnn.conv_scales(0.02, filter_scales, 0.05)
    if rounding == "xnnpack":
        want = ixnn.requantize_fp32(acc, scales, clamp[0], clamp, dtype)
    else:
        want = iref.requantize(acc, multiplier, shift, clamp[0], clamp, dtype, ties_up=rounding == "optimized")
    got = iconv.conv2d(x, x_zero_point, ig.pack_pairs(w.reshape(c_out, -1).T, w_zero_point), k, stride, pad, (oh, ow),
                       ig.requantization_params(bias, multiplier, shift, c_out), c_out, clamp[0], clamp,
                       np.empty(want.shape, dtype), rounding, ig.xnnpack_scales(scales, c_out))
    assert np.array_equal(got, want)
    assert len(np.unique(want)) > 2         # not all clamped: the sums were exercised


@pytest.mark.parametrize("size, k, stride, channels, c_out", [((7, 7), 3, 2, 3, 16), ((9, 6), 3, 1, 3, 13),
                                                              ((8, 11), 3, 2, 5, 40), ((5, 5), 3, 1, 1, 1),
                                                              ((97, 96), 3, 2, 3, 16), ((6, 7), 3, 2, 16, 8),
                                                              ((9, 8), 5, 2, 2, 17), ((7, 6), 1, 2, 3, 16)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("rounding", ["reference", "optimized", "xnnpack"])
@pytest.mark.parametrize("split", [False, True])
def test_integer_conv4_equals_the_reference(rng, monkeypatch, size, k, stride, channels, c_out, padding, rounding,
                                            split):
    """The full convolution on four-byte dot products (``integer_conv4``; forced, with the portable
    dot4, where the CPU lacks VNNI): the sizes of the test above (patch rows of 9, 15, 10, 48, 5 and 3
    bytes: a last quad that reads past the row, or not), an odd height whose SAME pads a row above,
    8-pixel tiles across output rows and past a task's end, weights that fit int8 once centred and
    (``split``) uint8 weights that do not (each quad's products with s too).  Weights no split fits
    (255 above a zero point of 0) take ``Conv``."""
    from mobilenet_np import spec
    from mobilenet_np.kernels import integer_conv as iconv
    from mobilenet_np.kernels import integer_conv4 as ic4
    from mobilenet_np.kernels import integer_gemm as ig
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    monkeypatch.setattr(ic4, "usable", lambda: True)
    x = rng.integers(0, 255, (2, *size, channels), endpoint=True).astype(np.uint8)
    w = rng.integers(0 if split else 31, 255 if split else 231, (c_out, k, k, channels), endpoint=True).astype(np.uint8)
    w[0, 0, 0, 0] = 0 if split else 131                    # TFLite OHWI; a weight 131 below the zero point
    bias = rng.integers(-3000, 3000, c_out).astype(np.int32)
    multiplier, shift = iref.conv_multipliers(0.02, np.array([0.01]), 0.05, True)
    if padding == "SAME":
        (oh, top, bottom), (ow, left, right) = (spec.same_padding(s, k, stride) for s in size)
    else:
        (oh, ow), top, bottom, left, right = ((s - k) // stride + 1 for s in size), 0, 0, 0, 0
    pad = (top, bottom, left, right)
    acc = iref.conv2d_accumulate(x, 117, w.transpose(1, 2, 3, 0), 131, bias, stride, pad, (oh, ow))
    scales = ixnn.conv_scales(0.02, np.array([0.01]), 0.05)
    if rounding == "xnnpack":
        want = ixnn.requantize_fp32(acc, scales, 3, (3, 250), np.uint8)
    else:
        want = iref.requantize(acc, multiplier, shift, 3, (3, 250), np.uint8, ties_up=rounding == "optimized")
    args = (117, ig.pack_pairs(w.reshape(c_out, -1).T, 131), k, stride, pad, (oh, ow),
            ig.requantization_params(bias, multiplier, shift, c_out), c_out, 3, (3, 250))
    conv = iconv.bound(x.shape, x.dtype, *args, rounding, ig.xnnpack_scales(scales, c_out))
    assert isinstance(conv, ic4.Conv4)
    assert conv.gemm.tasks_kernel is ic4.conv4_tasks
    assert (conv.gemm.args[2].size * 2 > -(-c_out // 16) * conv.gemm.args[1] * 16) is split      # the form
    got = iconv.conv2d(x, *args, np.empty(want.shape, np.uint8), rounding, ig.xnnpack_scales(scales, c_out))
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]
    assert len(np.unique(want)) > 2
    wide = np.zeros_like(w)
    wide[0, 0, 0, 0] = 255                                 # 255 above a zero point of 0: no split fits
    assert ic4.pack_quads(ig.pack_pairs(wide.reshape(c_out, -1).T, 0), k, k * channels, c_out) is None


@pytest.mark.parametrize("ties_up", [False, True])
def test_vector_requantization_equals_tflites_at_the_extremes(rng, ties_up):
    """``integer_simd.requantize`` (one add and a shift for TFLite's nudge and truncation toward zero) against
    the NumPy twin on int32 sums over the whole range, both signs, exact ties of both roundings, multipliers
    from 2^30 to 2^31 - 1 and shifts from -31 to +4 (the left shift kept in int32 range), no clamp."""
    import numba
    from mobilenet_np.kernels import integer_simd as iv
    from mobilenet_np.kernels.integer_wide import widen

    @numba.njit
    def requantize_all(acc, params, away, out):
        z = iv.zeros()
        for i in range(0, acc.size, 8):
            v = iv.requantize(widen(acc, i, z), widen(params[0], i, z), widen(params[1], i, z),
                              widen(params[2], i, z), widen(params[3], i, z), 0, -(1 << 31), (1 << 31) - 1, away)
            iv.store(out, i, v)

    count = 8 * 4096
    shift = rng.integers(-31, 5, count)
    shift[::7] = -rng.integers(1, 30, count)[::7]
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    bound = (1 << 31) >> left
    acc = rng.integers(-bound, bound, endpoint=False)
    acc[::11] = -bound[::11]
    acc[::13] = bound[::13] - 1
    multiplier = rng.integers(1 << 30, (1 << 31) - 1, count, endpoint=True)
    acc[::3], multiplier[::3] = acc[::3] | 1, 1 << 30        # ties of the high multiply: half an odd sum
    # ties of the right shift: with the multiplier 2^30 the high multiply halves an even sum exactly, so
    # (2j + 1) * 2^right gives (2j + 1) * 2^(right - 1), half way between two results
    odd = 2 * rng.integers(-(1 << (30 - right[::7])), 1 << (30 - right[::7])) + 1
    acc[::7], multiplier[::7] = odd << right[::7], 1 << 30
    params = np.stack([np.zeros(count), multiplier, left, right]).astype(np.int32)
    out = np.empty(count, np.int32)
    requantize_all(acc.astype(np.int32), params, 0 if ties_up else 1, out)
    assert np.array_equal(out, iref.multiply_by_quantized_multiplier(acc, multiplier, shift, ties_up))


def test_integer_peak_loop_equals_its_numpy_twin(rng):
    """The benchmark's vpmaddwd loop computes what it says (so the compiler cannot drop the work)."""
    from mobilenet_np.kernels.integer_peak import madd_loop, madd_loop_numpy

    w = rng.integers(-255, 256, 512).astype(np.int16)
    out = np.zeros(8, np.int32)
    madd_loop(w, 37, out)
    assert np.array_equal(out, madd_loop_numpy(w, 37)) and out.any()


def test_dot4_peak_loop_equals_its_numpy_twin(rng):
    from mobilenet_np.kernels.integer_peak import dot4_loop, dot4_loop_numpy

    w = rng.integers(-128, 128, 256).astype(np.int8).view(np.int16)
    x = rng.integers(0, 256, 288).astype(np.uint8)
    out = np.zeros(16, np.uint8)
    dot4_loop(w, x, 37, out)
    assert np.array_equal(out, dot4_loop_numpy(w, x, 37)) and out.any()


@pytest.mark.parametrize("rounding", ["reference", "xnnpack"])
def test_integer_kernels_split_over_threads_equal_one_thread(rng, monkeypatch, rounding):
    """The parallel entry points (rows / tasks split over Numba's threads, for the GEMM and the full
    convolution's tasks in place) give the bytes of the one-thread runs, at odd sizes: the split
    points must not drop or repeat a row or task."""
    import numba
    from mobilenet_np.kernels import integer_calls as calls
    from mobilenet_np.kernels import integer_conv as iconv
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_gemm as ig

    x = rng.integers(0, 256, (3, 13, 11, 21), endpoint=True).astype(np.uint8)
    bias = rng.integers(-3000, 3000, 21).astype(np.int32)
    params = ig.requantization_params(bias, 1 << 30, -9, 21)
    scales = ig.xnnpack_scales(np.full(21, 0.002), 21)
    dw = idw.pack_depthwise(rng.integers(0, 256, (3, 3, 21, 1)).astype(np.uint8), 131)
    pw = ig.pack_pairs(rng.integers(0, 256, (21, 21)).astype(np.uint8), 131)
    full = ig.pack_pairs(rng.integers(0, 256, (3 * 3 * 21, 21)).astype(np.uint8), 131)
    stem = ig.pack_pairs(rng.integers(0, 256, (3 * 3 * 3, 21)).astype(np.uint8), 131)     # odd patch rows

    def run_all():
        a = idw.depthwise_conv2d(x, 117, dw, 3, 2, (1, 1, 0, 1), (7, 6), params, 3, (0, 255),
                                 np.empty((3, 7, 6, 21), np.uint8), rounding, scales)
        b = ig.pointwise_conv2d(x.reshape(-1, 21), 117, pw, params, 21, 3, (0, 255),
                                np.empty((3 * 13 * 11, 21), np.uint8), rounding, scales)
        c = iconv.conv2d(x, 117, full, 3, 1, (1, 1, 1, 1), (13, 11), params, 21, 3, (0, 255),
                         np.empty((3, 13, 11, 21), np.uint8), rounding, scales)
        d = iconv.conv2d(np.ascontiguousarray(x[..., :3]), 117, stem, 3, 2, (0, 1, 0, 1), (7, 6), params, 21, 3,
                         (0, 255), np.empty((3, 7, 6, 21), np.uint8), rounding, scales)
        return a, b, c, d

    one = run_all()
    monkeypatch.setattr(calls, "SERIAL_BELOW", 0)
    # 3 parts: the GEMMs' 14 and 4 chunks of pixels do not divide, each part takes panels in every chunk
    # (more parts than this machine's cores is fine); 2 parts: they do, each takes a range of tasks
    for threads in (3, 2):
        monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
        split = run_all()
        for s, o in zip(split, one):
            assert np.array_equal(s, o)
    assert len(np.unique(one[0])) > 2


@pytest.mark.parametrize("c_in, c_out", [(16, 32), (135, 24), (21, 40)])
def test_bound_kernels_follow_their_arrays(rng, c_in, c_out):
    """A bound kernel (``Pointwise``, ``Depthwise``) keeps the argument tuple of the arrays it saw
    last: the same arrays with new contents, other arrays, and a non-contiguous input changed in
    place all give what a new call of the function gives; its working memory shared (``Scratch``)
    with garbage left in it by another kernel changes nothing (an odd C_in's extra column)."""
    from mobilenet_np.kernels import integer_calls as calls
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_gemm as ig

    params = ig.requantization_params(rng.integers(-3000, 3000, c_out).astype(np.int32), 1 << 30, -9, c_out)
    packed = ig.pack_pairs(rng.integers(0, 256, (c_in, c_out)).astype(np.uint8), 131)
    shared = (calls.Scratch(), calls.Scratch())
    for scratch in shared:
        scratch.take(1 << 16, np.uint8)[:] = 0x5A                  # another kernel's leftovers
    pointwise = ig.Pointwise(12, c_in, 117, packed, params, c_out, 3, (0, 255), scratch=shared)
    x, out = np.empty((12, c_in), np.uint8), np.empty((12, c_out), np.uint8)
    wide = np.empty((12, 2 * c_in), np.uint8)
    for inputs in (x, x, np.empty((12, c_in), np.uint8), wide[:, ::2], wide[:, ::2]):
        inputs[...] = rng.integers(0, 256, inputs.shape)
        want = ig.pointwise_conv2d(np.ascontiguousarray(inputs), 117, packed, params, c_out, 3, (0, 255),
                                   np.empty((12, c_out), np.uint8))
        assert np.array_equal(pointwise(inputs, out), want)
    dw_params = ig.requantization_params(rng.integers(-3000, 3000, c_in).astype(np.int32), 1 << 30, -9, c_in)
    dw = idw.pack_depthwise(rng.integers(0, 256, (3, 3, c_in, 1)).astype(np.uint8), 131)
    depthwise = idw.Depthwise((1, 5, 6, c_in), 117, dw, 3, 1, (1, 1, 1, 1), (5, 6), dw_params, 3, (0, 255))
    x, out = np.empty((1, 5, 6, c_in), np.uint8), np.empty((1, 5, 6, c_in), np.uint8)
    for _ in range(2):
        x[...] = rng.integers(0, 256, x.shape)
        want = idw.depthwise_conv2d(x, 117, dw, 3, 1, (1, 1, 1, 1), (5, 6), dw_params, 3, (0, 255),
                                    np.empty(x.shape, np.uint8))
        assert np.array_equal(depthwise(x, out), want)

@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(2, 7, 5, 13), (1, 3, 3, 80), (3, 1, 1, 1)])
def test_xnnpack_add_and_global_average_kernels_equal_their_twins(rng, dtype, shape):
    """The Numba ADD and global pool give integer_xnnpack's bytes: odd shapes, both types,
    differently scaled inputs (either the larger), a clamp that bites."""
    from mobilenet_np.kernels import integer_add as iadd
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    lo, hi = iref.DTYPE_RANGES[np.dtype(dtype)]
    a = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    b = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    for a_scale, b_scale, out_scale, clamp in [(0.02, 0.05, 0.06, (lo, hi)), (0.11, 0.03, 0.04, (lo + 40, hi - 30))]:
        want = ixnn.add(a, a_scale, 7, b, b_scale, -3, out_scale, 5, clamp, dtype)
        params = iadd.add_params(a_scale, 7, b_scale, -3, out_scale)
        got = iadd.add(a, b, params, clamp, 5, np.empty(shape, dtype))
        assert np.array_equal(got, want)
    for in_scale, out_scale in [(0.02, 0.015), (0.3, 0.01)]:
        want = ixnn.global_average(a, in_scale, 9, out_scale, -4, dtype)
        got = iadd.global_average(a, in_scale, 9, out_scale, -4, (lo, hi), np.empty(want.shape, dtype))
        assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_reference_add_kernel_equals_its_twin(rng, dtype):
    """The Numba reference ADD gives integer_reference.add's bytes: many random scale triples (inputs
    either way round, the output scale above and below them, so the output shift is positive and
    negative), zero points, clamps that bite, and int8 values held as uint8 + 128 with every zero
    point and clamp + 128 (as the fast graph runs them); its one-value fixed-point multiply against
    the NumPy one, left shifts and the saturating case included (ADD's own scales never need them)."""
    from mobilenet_np.kernels import integer_add as iadd

    lo, hi = iref.DTYPE_RANGES[np.dtype(dtype)]
    varied = 0
    for _ in range(60):
        n = int(rng.integers(1, 700))
        a = rng.integers(lo, hi, n, endpoint=True).astype(dtype)
        b = rng.integers(lo, hi, n, endpoint=True).astype(dtype)
        scales = tuple(float(s) for s in 10.0 ** rng.uniform(-3, 0, 3))
        zps = tuple(int(z) for z in rng.integers(lo, hi, 3, endpoint=True))
        clamp = (int(rng.integers(lo, lo + 100)), int(rng.integers(hi - 100, hi)))
        want = iref.add(a, scales[0], zps[0], b, scales[1], zps[1], scales[2], zps[2], clamp, dtype)
        got = iadd.ReferenceAdd(scales, zps[:2], clamp, zps[2])(a, b, np.empty(n, dtype))
        assert np.array_equal(got, want)
        if dtype == np.int8:                    # the same bytes, top bit flipped
            up = 128
            shifted = iadd.ReferenceAdd(scales, (zps[0] + up, zps[1] + up), (clamp[0] + up, clamp[1] + up), zps[2] + up)
            got = shifted(a.view(np.uint8) ^ 0x80, b.view(np.uint8) ^ 0x80, np.empty(n, np.uint8))
            assert np.array_equal(got ^ 0x80, want.view(np.uint8))
        varied += len(np.unique(want)) > 2
    assert varied >= 20                      # most cases are not all clamped
    cases = [(iref.INT32_MIN, iref.INT32_MIN, 0), (iref.INT32_MIN, iref.INT32_MAX, -3), (5, 1 << 30, 0)]
    for shift in range(-31, 5):
        values = rng.integers(-(1 << 31) >> max(shift, 0), (1 << 31) >> max(shift, 0), 40)
        cases += [(int(v), int(m), shift) for v, m in zip(values, rng.integers(1 << 30, 1 << 31, 40))]
    for x, multiplier, shift in cases:
        assert iadd._scaled(x, multiplier, shift) == iref.multiply_by_quantized_multiplier(x, multiplier, shift)


def test_bound_calls_and_entry_points_give_the_kernels_bytes(rng):
    """``calls`` of the bound kernels (what the fast graph's plan runs) and ``integer_calls.direct`` (a
    dispatcher's compiled code for exactly these arguments) give the bytes of the bound kernels' own
    calls; ``direct`` hands back what it cannot look up (a NumPy function, types never compiled)."""
    from mobilenet_np.kernels import integer_add as iadd
    from mobilenet_np.kernels import integer_calls as calls
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_gemm as ig

    x = rng.integers(0, 256, (1, 7, 6, 24)).astype(np.uint8)
    params = ig.requantization_params(rng.integers(-3000, 3000, 24), 1 << 30, -8, 24)
    pw = ig.Pointwise(42, 24, 117, ig.pack_pairs(rng.integers(0, 256, (24, 24)).astype(np.uint8), 131), params, 24,
                      3, (0, 255))
    dw = idw.Depthwise(x.shape, 117, idw.pack_depthwise(rng.integers(0, 256, (3, 3, 24, 1)).astype(np.uint8), 131), 3,
                       1, (1, 1, 1, 1), (7, 6), params, 3, (0, 255))
    add = iadd.Add(iadd.add_params(0.02, 117, 0.05, 120, 0.06), (0, 255), 5)
    for kernel, inputs in ((pw, (x,)), (dw, (x,)), (add, (x, x[:, ::-1].copy()))):
        want = kernel(*inputs, np.empty(x.shape, np.uint8)).copy()
        out = np.zeros(x.shape, np.uint8)
        made = kernel.calls(*inputs, out)
        for fn, args in made:
            fast = calls.direct(fn, args)
            assert fast is not fn or not hasattr(fn, "overloads")
            fast(*args)
        assert np.array_equal(out, want), type(kernel).__name__
    assert calls.direct(np.copyto, (x, x)) is np.copyto
    assert calls.direct(iadd.add_bytes, (x.reshape(-1).astype(np.float64),) * 2 + (1, 1, 0, 1, 0, 255, 0, x)) \
        is iadd.add_bytes
    assert pw.calls(x[:, :, ::-1], out) is None          # not C-contiguous: left to the bound call


def _coral_graph_on_two_threads(shared, batch: int, seed: int):
    """(the XNNPACK fast graph of the Coral V1 0.5/160 uint8 file, seeded uint8 images), for a test
    that runs it on two Numba threads (``_two_threads``)."""
    import numba
    from mobilenet_np.forward.quantized_engine import FastQuantizedGraph

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here: nothing to share out or choose between")
    path = shared("weights", "mobilenet_v1_050_160", "tflite_uint8_quant", "mobilenet_v1_0.5_160_quant.coral.tflite")
    x = np.random.default_rng(seed).integers(0, 256, (batch, 160, 160, 3)).astype(np.uint8)
    return FastQuantizedGraph(path, "xnnpack"), x


@contextlib.contextmanager
def _two_threads():
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def test_fast_graph_batch_split_over_threads_gives_the_same_bytes(shared, monkeypatch):
    """A batch split over T Python threads (each part through the whole graph on one thread; the
    way without a program, ``PROGRAM`` off) and a batch whose program's tasks the threads share
    give every image's bytes of the unsplit run, for an odd batch not divisible by T."""
    from mobilenet_np.forward import quantized_engine

    graph, x = _coral_graph_on_two_threads(shared, 5, 5)
    with _two_threads():
        shared_tasks = graph.run(x)[0]
        assert not graph._pools                                    # no split: the program's shared tasks
        monkeypatch.setattr(quantized_engine, "PROGRAM", False)
        split = graph.run(x)[0]
        whole = graph.run(x, on_op=lambda i, op, y: None)[0]      # on_op: the unsplit path
    assert graph._pools                                            # the split path was taken
    assert split.shape == whole.shape == (5, 1001) and np.array_equal(split, whole)
    assert np.array_equal(shared_tasks, whole)


def test_fast_graph_small_batches_take_either_thread_count_with_the_same_bytes(shared):
    """At batch 1 on two threads the graph runs its program on the calling thread or on both,
    whichever has been faster lately (``choice.py``): both ways are timed within a few calls (a
    call on both threads right after one on the calling thread is not), and every call gives the
    bytes of the program on two threads."""
    graph, x = _coral_graph_on_two_threads(shared, 1, 6)
    with _two_threads():
        graph.adaptive = False
        want = graph.run(x)[0]
        graph.adaptive = True
        record = graph._choice._record((x.shape, tuple(graph.sub.outputs), 2))
        got = []
        while len(got) < 30 and min(record.counts) < 2:     # (7 when no call comes after a pause)
            got.append(graph.run(x)[0])
    assert all(np.array_equal(g, want) for g in got)
    assert min(record.counts) >= 2, record.counts            # both ways were timed
    assert {plan.parts for plan in graph._local.plans.values()} == {1, 2}


def test_program_compiles_the_kinds_it_uses():
    """A program's table holds the addresses of its rows' kernels once it is finished (compiled on
    a program's first use of a kind); ``kernel_table()`` without kinds holds every kernel's."""
    from mobilenet_np.kernels import integer_add as iadd
    from mobilenet_np.kernels import integer_program as iprog

    a, b = np.arange(100, dtype=np.uint8), np.arange(100, dtype=np.uint8)[::-1].copy()
    out = np.empty(100, np.uint8)
    program = iprog.Program()
    assert program.add(iadd.add_bytes, (a, b, 3, 5, 7, 2, 0, 255, 0, out))
    program.finish(1)
    assert program.table[iprog.ADD] and program.table[iprog.STEP] and program.table[iprog.PASS]
    fn, args = program.call(0, 1)
    fn(*args)
    want = out.copy()
    iadd.add_bytes(a, b, 3, 5, 7, 2, 0, 255, 0, want)
    assert np.array_equal(out, want) and len(np.unique(out)) > 2
    table = iprog.kernel_table()
    assert all(table[kind] for kind in iprog.SIGNATURES)
