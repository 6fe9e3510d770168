"""Sixteen-lane integer vectors (one 512-bit register, AVX-512) for the Numba integer kernels.

``integer_simd`` works on ``<8 x i32>`` sums (AVX2's width).  Where the CPU has AVX-512 (the
float kernels' ``simd.LANES`` is 16), the depthwise blocks widen sixteen channels at a time into
an ``<16 x i32>`` (``widen``, which loads as many lanes as a given vector has, with
``integer_simd.mul_add`` / ``add``, ``requantized`` and ``store_bytes``, which take either
width): the same arithmetic lane by lane, so the same bytes.  With AVX-512 VNNI, ``dot4`` is
``vpdpbusd``: four byte products into each of sixteen int32 lanes (``integer_dot4.py``);
elsewhere it is portable IR with the same sums.  Around it: ``gather_taps`` (four 16-byte loads
transposed so that a lane holds one channel's four bytes: ``integer_depthwise4.py``),
``byte_sum`` (``vpsadbw``) and ``scaled_add`` (the split GEMM's 128 - zp times a pixel's byte
sum), ``block_params`` / ``requantized_block`` (a panel's requantization loaded once, its sums
started at the bias).
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .integer_simd import _BYTES64, _I32, _V16I32, _flat, _pointer, i32x8, i32x16, requantize_by
from .simd import LANES as _FLOAT_LANES
from .simd import cpu_features


def dot4_instruction() -> bool:
    """Whether ``dot4`` compiles to ``vpdpbusd`` (the CPU has AVX-512 VNNI): else to portable IR
    (widen, multiply, add groups of four), same results.  ``MOBILENET_NP_DOT4=generic`` forces
    the portable form, ``vnni`` the instruction (on a CPU without it, the compile fails)."""
    forced = os.environ.get("MOBILENET_NP_DOT4", "").strip()
    if forced in ("generic", "vnni"):
        return forced == "vnni"
    return {"avx512f", "avx512vnni"} <= cpu_features()


DOT4_VNNI = dot4_instruction()
# byte_sum's vpsadbw (MOBILENET_NP_DOT4=generic forces the portable IR here too, to test it)
_SAD = "avx512bw" in cpu_features() and os.environ.get("MOBILENET_NP_DOT4", "").strip() != "generic"
# Sixteen int32 lanes (one 512-bit register) where the float kernels use 16 lanes (AVX-512):
# the depthwise blocks (integer_depthwise.py) then take sixteen channels at a time.
WIDE_INT32 = _FLOAT_LANES == 16


@intrinsic
def zeros16(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16I32, [0] * 16)
    return i32x16(), codegen


@intrinsic
def load_quads(typingctx, array, byte_index):
    """64 bytes of an int16 array (int8 weights viewed as int16), from byte ``byte_index`` on:
    sixteen channels' four int8 taps each, one int32 lane per channel."""
    if not _flat(array, types.int16):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
        return builder.load(builder.bitcast(at, _V16I32.as_pointer()), align=1)
    return i32x16(array, types.intp), codegen


@intrinsic
def splat_quad(typingctx, array, index):
    """The four bytes array[index : index + 4] of a uint8 array repeated in all sixteen int32 lanes."""
    if not _flat(array, types.uint8):
        return None

    def codegen(context, builder, sig, args):
        quad = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _I32), align=1)
        v = builder.insert_element(ir.Constant(_V16I32, ir.Undefined), quad, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(_V16I32, [0] * 16))
    return i32x16(array, types.intp), codegen


@intrinsic
def dot4(typingctx, acc, x, w):
    """acc + sum over j < 4 of x.byte[4i + j] (unsigned) * w.byte[4i + j] (signed) in each int32
    lane i: ``vpdpbusd`` (no saturation: the sums wrap as int32 adds do, and four products of
    255 * 128 cannot), or the same in portable IR."""
    def codegen(context, builder, sig, args):
        acc_, x_, w_ = args
        if DOT4_VNNI:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3),
                                                "llvm.x86.avx512.vpdpbusd.512")
            return builder.call(fn, [acc_, x_, w_])
        wide = ir.VectorType(_I32, 64)
        products = builder.mul(builder.zext(builder.bitcast(x_, _BYTES64), wide),
                               builder.sext(builder.bitcast(w_, _BYTES64), wide))
        total = acc_
        for j in range(4):
            part = builder.shuffle_vector(products, products, ir.Constant(_V16I32, list(range(j, 64, 4))))
            total = builder.add(total, part)
        return total
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def widen(typingctx, array, index, like):
    """array[index : index + n] as n int32 lanes, n the width of ``like`` (an ``i32x8`` or
    ``i32x16``, whose value is not used): uint8 zero-extended, int8 and int16 sign-extended,
    int32 as they are.  Lets one kernel body run at either width (``integer_depthwise``)."""
    kinds = (types.uint8, types.int8, types.int16, types.int32)
    if like not in (i32x8, i32x16) or not any(_flat(array, k) for k in kinds):
        return None
    n = 16 if like == i32x16 else 8
    element = array.dtype

    def codegen(context, builder, sig, args):
        bits = {types.uint8: 8, types.int8: 8, types.int16: 16, types.int32: 32}[element]
        raw_type = ir.VectorType(ir.IntType(bits), n)
        raw = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], raw_type), align=bits // 8)
        vec = ir.VectorType(_I32, n)
        if bits == 32:
            return raw
        return builder.zext(raw, vec) if element == types.uint8 else builder.sext(raw, vec)
    return like(array, types.intp, like), codegen


def _tap_pointer(builder, data, zero_bytes, index, checked):
    """The address of 16 bytes: data + index, or (``checked``, index negative) ``zero_bytes``."""
    at = builder.gep(data, [index])
    if not checked:
        return at
    return builder.select(builder.icmp_signed("<", index, ir.Constant(index.type, 0)), zero_bytes, at)


def _gather(checked):
    @intrinsic
    def gather(typingctx, array, zero_bytes, i0, i1, i2, i3):
        if not (_flat(array, types.uint8) and _flat(zero_bytes, types.int32)):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            zeros = builder.bitcast(context.make_array(sig.args[1])(context, builder, args[1]).data, data.type)
            v16 = ir.VectorType(ir.IntType(8), 16)
            parts = [builder.load(builder.bitcast(_tap_pointer(builder, data, zeros, i, checked), v16.as_pointer()),
                                  align=1) for i in args[2:]]
            pairs = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
            low = builder.shuffle_vector(parts[0], parts[1], pairs)
            high = builder.shuffle_vector(parts[2], parts[3], pairs)
            mask = [j * 16 + i for i in range(16) for j in range(4)]      # byte 4i + j <- tap j, channel i
            quads = builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, 64), mask))
            return builder.bitcast(quads, _V16I32)
        return i32x16(array, zero_bytes, types.intp, types.intp, types.intp, types.intp), codegen
    return gather


gather_taps = _gather(False)
gather_taps.__doc__ = """Sixteen channels of four taps: the 16 bytes at each of x[i0..], x[i1..], x[i2..],
x[i3..] (a uint8 array) transposed so that int32 lane c holds channel c's four bytes, tap j in
byte j (``dot4``'s operand); ``zero_bytes`` (an int32 array, the input zero point in every
byte) is not read."""
gather_taps_checked = _gather(True)
gather_taps_checked.__doc__ = """``gather_taps`` where a negative index stands for a tap in the padding:
its 16 bytes are read from ``zero_bytes`` (the input zero point in every byte) instead."""


_BLOCK = types.UniTuple(i32x16, 5)


@intrinsic
def block_params(typingctx, params, scales, c):
    """The requantization of channels c..c+15 as five ``i32x16``, loaded once for a loop over pixels:
    bias, multiplier, left shift, right shift (``params`` [4, C] int32 rows) and XNNPACK's float32
    scale (``scales``, its bits).  Start the sums at the bias and requantize with
    ``requantized_block``: the bytes of ``integer_simd.requantized``."""
    if not (isinstance(params, types.Array) and params.dtype == types.int32 and params.ndim == 2
            and params.layout == "C" and _flat(scales, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        table = context.make_array(sig.args[0])(context, builder, args[0])
        width = cgutils.unpack_tuple(builder, table.shape, 2)[1]
        rows = []
        for r in range(4):
            at = builder.add(builder.mul(width, ir.Constant(width.type, r)), args[2])
            rows.append(builder.load(builder.bitcast(builder.gep(table.data, [at]), _V16I32.as_pointer()), align=4))
        rows.append(builder.load(_pointer(context, builder, sig.args[1], args[1], args[2], _V16I32), align=4))
        return context.make_tuple(builder, sig.return_type, rows)
    return _BLOCK(params, scales, types.intp), codegen


@intrinsic
def requantized_block(typingctx, acc, block, rounding, zero_point, lo, hi):
    """Sixteen sums that already hold their bias requantized by ``block_params``' block, as
    ``integer_simd.requantized`` does with the same rounding (REFERENCE, OPTIMIZED or XNNPACK)."""
    if acc != i32x16 or block != _BLOCK:
        return None

    def codegen(context, builder, sig, args):
        acc, block, rounding = args[:3]
        _, multiplier, left, right, bits = (builder.extract_value(block, i) for i in range(5))
        return requantize_by(builder, acc, None, rounding, *(builder.trunc(a, _I32) for a in args[3:]),
                             lambda: builder.bitcast(bits, ir.VectorType(ir.FloatType(), 16)),
                             lambda: (multiplier, left, right))
    return i32x16(i32x16, _BLOCK, types.int64, types.int64, types.int64, types.int64), codegen


@intrinsic
def byte_sum(typingctx, array, index, count):
    """The sum of the uint8 bytes array[index : index + count] as an int64: 64 at a time into eight
    int64 partial sums (``vpsadbw`` where the CPU has AVX-512 BW: its sums of eight bytes; elsewhere
    the widened bytes' sums of eight), added up once at the end; a last part of fewer than 64 bytes
    by a masked load (nothing outside the range is read)."""
    if not _flat(array, types.uint8):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        start, count = args[1], args[2]
        i64 = ir.IntType(64)
        v64, v8 = ir.VectorType(ir.IntType(8), 64), ir.VectorType(i64, 8)

        def partial(raw):           # 64 bytes -> eight int64 sums of eight bytes each
            if _SAD:
                sad = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v64, v64]),
                                                     "llvm.x86.avx512.psad.bw.512")
                return builder.call(sad, [raw, ir.Constant(v64, [0] * 64)])
            wide = builder.zext(raw, ir.VectorType(i64, 64))
            total = builder.shuffle_vector(wide, wide, ir.Constant(ir.VectorType(_I32, 8), list(range(0, 64, 8))))
            for j in range(1, 8):
                total = builder.add(total, builder.shuffle_vector(
                    wide, wide, ir.Constant(ir.VectorType(_I32, 8), list(range(j, 64, 8)))))
            return total

        sums = cgutils.alloca_once_value(builder, ir.Constant(v8, [0] * 8))
        whole = builder.udiv(count, ir.Constant(count.type, 64))
        with cgutils.for_range(builder, whole) as loop:
            at = builder.add(start, builder.mul(loop.index, ir.Constant(count.type, 64)))
            raw = builder.load(builder.bitcast(builder.gep(data, [at]), v64.as_pointer()), align=1)
            builder.store(builder.add(builder.load(sums), partial(raw)), sums)
        left = builder.sub(count, builder.mul(whole, ir.Constant(count.type, 64)))
        with builder.if_then(builder.icmp_signed(">", left, ir.Constant(count.type, 0))):
            masked = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v64, [v64.as_pointer(), _I32, ir.VectorType(ir.IntType(1), 64), v64]),
                "llvm.masked.load.v64i8.p0v64i8")
            ones = builder.sub(builder.shl(ir.Constant(i64, 1), left), ir.Constant(i64, 1))    # left < 64
            pointer = builder.bitcast(builder.gep(data, [builder.add(start, builder.mul(whole, ir.Constant(
                count.type, 64)))]), v64.as_pointer())
            raw = builder.call(masked, [pointer, ir.Constant(_I32, 1),
                                        builder.bitcast(ones, ir.VectorType(ir.IntType(1), 64)),
                                        ir.Constant(v64, [0] * 64)])
            builder.store(builder.add(builder.load(sums), partial(raw)), sums)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [v8]),
                                                "llvm.vector.reduce.add.v8i64")
        return builder.call(reduce, [builder.load(sums)])
    return types.int64(array, types.intp, types.intp), codegen


@intrinsic
def scaled_add(typingctx, acc, scalar, vector):
    """acc + scalar * vector, lane by lane in int32 (``vpmulld``; the scalar truncated to int32)."""
    if acc != i32x16 or vector != i32x16 or not isinstance(scalar, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        s = builder.trunc(args[1], _I32) if args[1].type.width > 32 else builder.sext(args[1], _I32) \
            if args[1].type.width < 32 else args[1]
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(_V16I32, ir.Undefined), s,
                                                              ir.Constant(_I32, 0)),
                                       ir.Constant(_V16I32, ir.Undefined), ir.Constant(_V16I32, [0] * 16))
        return builder.add(args[0], builder.mul(splat, args[2]))
    return i32x16(i32x16, scalar, i32x16), codegen
