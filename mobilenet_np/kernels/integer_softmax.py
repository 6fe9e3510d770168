"""TFLite's reference quantized SOFTMAX in plain NumPy: gemmlowp's fixed-point exponential.

The quantized MobileNets end in SOFTMAX (uint8, or int8 from the converter).  TFLite's reference
kernel never computes a float: it scales (q - max q) by beta * input_scale into a fixed-point
number with 5 integer bits, evaluates exp() on it with a polynomial and a barrel of constant
factors (gemmlowp's ``exp_on_negative_values``), sums the exponentials with 12 integer bits,
takes the reciprocal of the sum by Newton-Raphson (``one_over_one_plus_x_for_x_in_0_1``), and
writes probabilities with scale 1/256.  Each step below is one of those, on int64 arrays that hold
int32 values.  A fixed-point number with I integer bits is stored as raw = real * 2^(31 - I).

TFLite's *optimized* kernel (the default resolver) uses a float lookup table instead, so its
bytes can differ from these; the reference is what this module reproduces.

``softmax`` is the plain twin, step by step; ``Softmax`` gives the same bytes faster (the fast
graph's op): for 8-bit inputs, x - max(x) takes only 256 values, so the exponentials (and their
Q12.19 terms of the sum) are a 256-entry table made once per (beta, scale) by the twin's own
functions, and a row costs a table look-up, a sum, and the final multiply of each exponential by
the row's reciprocal (V1's 1001 classes, batch 1: ~1 ms -> ~0.07-0.09 ms, timed alone).
"""

from __future__ import annotations

import math

import numpy as np

from .integer_reference import (INT32_MAX, INT32_MIN, quantize_multiplier, rounding_divide_by_pot,
                                saturating_rounding_doubling_high_mul as high_mul)

SCALED_DIFF_INTEGER_BITS = 5        # exp's argument: Q5.26
ACCUMULATION_INTEGER_BITS = 12      # the sum of exponentials: Q12.19
ONE_Q0 = INT32_MAX                  # 1.0 in Q0.31 (saturated)


def _multiply_by_pot(x, exponent: int):
    """x * 2^exponent with saturation (exponent > 0) or rounding (exponent < 0)."""
    x = np.asarray(x, np.int64)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    limit = (1 << (31 - exponent)) - 1
    return np.where(x > limit, INT32_MAX, np.where(x < -limit, INT32_MIN, x << exponent))


def _exp_on_interval(a):
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: a Taylor polynomial around -1/8."""
    exp_minus_one_eighth = 1895147668           # exp(-1/8) in Q0.31
    one_third = 715827883                       # 1/3 in Q0.31
    x = a + (1 << 28)                           # a + 1/8
    x2 = high_mul(x, x)
    x3 = high_mul(x2, x)
    x4 = high_mul(x2, x2)
    x4_over_4 = _multiply_by_pot(x4, -2)
    polynomial = _multiply_by_pot(high_mul(x4_over_4 + x3, one_third) + x2, -1)   # x2/2 + x3/6 + x4/24
    return exp_minus_one_eighth + high_mul(exp_minus_one_eighth, x + polynomial)


# exp(-2^k) in Q0.31 for the bits k = -2 .. 4 of a Q5.26 argument: gemmlowp's barrel shifter.
EXP_OF_MINUS_POWER_OF_TWO = {-2: 1672461947, -1: 1302514674, 0: 790015084, 1: 290630308,
                             2: 39332535, 3: 720401, 4: 242}


def exp_on_negative_values(a):
    """exp(a) for a <= 0 given in Q5.26, returned in Q0.31: exp of the argument modulo 1/4 by
    the polynomial, then one constant factor per set bit of the rest."""
    fractional_bits = 31 - SCALED_DIFF_INTEGER_BITS
    one_quarter = 1 << (fractional_bits - 2)
    a = np.asarray(a, np.int64)
    a_mod_quarter_minus_quarter = (a & (one_quarter - 1)) - one_quarter
    result = _exp_on_interval(_multiply_by_pot(a_mod_quarter_minus_quarter, SCALED_DIFF_INTEGER_BITS))
    remainder = a_mod_quarter_minus_quarter - a
    for exponent, factor in EXP_OF_MINUS_POWER_OF_TWO.items():
        if SCALED_DIFF_INTEGER_BITS > exponent:
            bit = (remainder >> (fractional_bits + exponent)) & 1
            result = np.where(bit == 1, high_mul(result, factor), result)
    return np.where(a == 0, ONE_Q0, result)


def _rounding_half_sum(a, b):
    total = np.asarray(a, np.int64) + b
    return np.where(total >= 0, (total + 1) // 2, -((-total + 1) // 2))   # (sum +- 1) / 2, truncated


def one_over_one_plus_x(x):
    """1 / (1 + x) for x in [0, 1) in Q0.31, returned in Q0.31: three Newton-Raphson steps on
    the half denominator, in Q2.29."""
    half_denominator = _rounding_half_sum(x, ONE_Q0)
    estimate = 1515870810 + high_mul(half_denominator, -1010580540)      # 48/17 - 32/17 * d, Q2.29
    for _ in range(3):
        error = (1 << 29) - high_mul(half_denominator, estimate)        # 1 - d * estimate, Q2.29
        estimate = estimate + _multiply_by_pot(high_mul(estimate, error), 2)
    # estimate / 2 is the same raw number read as Q1.30; rescaling that to Q0.31 doubles the raw.
    return _multiply_by_pot(estimate, 1)


def _count_leading_zeros(x):
    """Leading zero bits of positive values below 2^32, as uint32 (frexp's exponent is the bit
    length, exactly, for integers below 2^53)."""
    return 32 - np.frexp(np.asarray(x, np.float64))[1].astype(np.int64)


def softmax_parameters(beta: float, input_scale: float) -> tuple[int, int, int]:
    """(multiplier, left shift, smallest difference kept): the input difference scaled by
    beta * input_scale into Q5.26; differences below the minimum give probability zero."""
    real = min(beta * float(np.float32(input_scale)) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)),
               (1 << 31) - 1.0)
    multiplier, left_shift = quantize_multiplier(real)
    radius = (((1 << SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - SCALED_DIFF_INTEGER_BITS))
              / (1 << left_shift))
    return multiplier, left_shift, -int(math.floor(radius))


def softmax(x, beta: float, input_scale: float, dtype):
    """Quantized SOFTMAX over the last axis.  TFLite requires the output scale 1/256 and the
    type's minimum as zero point (0 for uint8, -128 for int8), so probability p is p * 256 + min."""
    x = np.asarray(x, np.int64)
    multiplier, left_shift, diff_min = softmax_parameters(beta, input_scale)
    diff = x - x.max(axis=-1, keepdims=True)
    kept = diff >= diff_min
    scaled = high_mul(np.where(kept, diff, 0) * (1 << left_shift), multiplier)    # Q5.26
    exps = exp_on_negative_values(scaled)                                          # Q0.31
    to_accumulator = ACCUMULATION_INTEGER_BITS                                     # Q0.31 -> Q12.19
    sum_of_exps = np.where(kept, rounding_divide_by_pot(exps, to_accumulator), 0).sum(axis=-1, keepdims=True)
    # The reciprocal of the sum: normalise it to 1 + y with y in [0, 1), invert, remember the shift.
    headroom_plus_one = _count_leading_zeros(sum_of_exps)
    bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one
    shifted_sum_minus_one = ((sum_of_exps << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    reciprocal = one_over_one_plus_x(shifted_sum_minus_one)
    probability = rounding_divide_by_pot(high_mul(reciprocal, exps), bits_over_unit + 31 - 8)
    lo, hi = (0, 255) if np.dtype(dtype) == np.uint8 else (-128, 127)
    out = np.clip(probability + lo, lo, hi)
    return np.where(kept, out, lo).astype(dtype)


# --- the fast op -----------------------------------------------------------------------------

def _high_mul_int(a: int, b: int) -> int:
    """``saturating_rounding_doubling_high_mul`` on Python ints (one value: no array overhead)."""
    if a == b == INT32_MIN:
        return INT32_MAX
    total = a * b + ((1 << 30) if a * b >= 0 else 1 - (1 << 30))
    return total >> 31 if total >= 0 else -((-total) >> 31)


def _multiply_by_pot_int(x: int, exponent: int) -> int:
    """``_multiply_by_pot`` on Python ints, for the exponents 2 and 1 the reciprocal uses."""
    limit = (1 << (31 - exponent)) - 1
    return INT32_MAX if x > limit else INT32_MIN if x < -limit else x << exponent


def one_over_one_plus_x_int(x: int) -> int:
    """``one_over_one_plus_x`` of one value on Python ints: the same steps (a row of the fast
    softmax needs one reciprocal, where the array version's ~150 NumPy calls take ~0.25 ms)."""
    total = x + ONE_Q0
    half_denominator = (total + 1) // 2 if total >= 0 else -((-total + 1) // 2)
    estimate = 1515870810 + _high_mul_int(half_denominator, -1010580540)
    for _ in range(3):
        error = (1 << 29) - _high_mul_int(half_denominator, estimate)
        estimate = estimate + _multiply_by_pot_int(_high_mul_int(estimate, error), 2)
    return _multiply_by_pot_int(estimate, 1)


class Softmax:
    """``softmax(x, beta, input_scale, dtype)``, the same bytes, for uint8 or int8 ``x`` (other
    types go to the twin).  x - max(x) takes only the 256 values 0, -1, ..., -255, so made once:
    the exponential of each and its term of the Q12.19 sum (by the twin's own functions).  Per
    call: the table look-ups, each row's sum and reciprocal (``_row_scaling``), and the row's
    256 possible probabilities, which the row's differences then pick."""

    def __init__(self, beta: float, input_scale: float, dtype):
        self.beta, self.input_scale, self.dtype = beta, input_scale, np.dtype(dtype)
        multiplier, left_shift, diff_min = softmax_parameters(beta, input_scale)
        diff = -np.arange(256, dtype=np.int64)                 # entry i: the difference -i
        self.kept = diff >= diff_min
        self.exps = exp_on_negative_values(high_mul(np.where(self.kept, diff, 0) * (1 << left_shift), multiplier))
        self.terms = np.where(self.kept, rounding_divide_by_pot(self.exps, ACCUMULATION_INTEGER_BITS), 0)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype not in (np.uint8, np.int8):
            return softmax(x, self.beta, self.input_scale, self.dtype)
        rows = x.reshape(-1, x.shape[-1])
        at = rows.max(axis=1, keepdims=True).astype(np.intp) - rows        # -(x - max): the entry
        scaling = np.array([_row_scaling(int(total)) for total in self.terms[at].sum(axis=1)], np.int64)
        reciprocal, shift = scaling[:, :1], scaling[:, 1:]
        # The twin's high_mul(reciprocal, exps) and rounding_divide_by_pot(., shift) for operands that are
        # never negative (the reciprocal lies in (1/2, 1], the exponentials in [0, 1]; shift >= 3): both
        # round half up, (v + half) >> bits, their negative branches and saturation left out.
        high = (reciprocal * self.exps + (1 << 30)) >> 31
        probability = (high + (1 << (shift - 1))) >> shift
        lo, hi = (0, 255) if self.dtype == np.uint8 else (-128, 127)
        table = np.where(self.kept, np.minimum(probability + lo, hi), lo).astype(self.dtype)     # [rows, 256]
        return table[np.arange(len(rows))[:, None], at].reshape(x.shape)


def _row_scaling(sum_of_exps: int) -> tuple[int, int]:
    """(reciprocal, right shift) of a row's Q12.19 sum of exponentials, on Python ints, as the twin:
    the sum normalised to 1 + y (its leading zeros: ``_count_leading_zeros``), y inverted."""
    headroom_plus_one = 32 - sum_of_exps.bit_length()
    bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one
    shifted_sum_minus_one = ((sum_of_exps << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_int(shifted_sum_minus_one), bits_over_unit + 31 - 8
