"""Sixteen-lane integer vectors (one 512-bit register, AVX-512) for the Numba integer kernels.

``integer_simd`` works on ``<8 x i32>`` sums (AVX2's width).  Where the CPU has AVX-512 (the
float kernels' ``simd.LANES`` is 16), the depthwise blocks widen sixteen channels at a time into
an ``<16 x i32>`` (``widen``, which loads as many lanes as a given vector has, with
``integer_simd.mul_add`` / ``add``, ``requantized`` and ``store_bytes``, which take either
width): the same arithmetic lane by lane, so the same bytes.  With AVX-512 VNNI, ``dot4`` is
``vpdpbusd``: four byte products into each of sixteen int32 lanes (``integer_dot4.py``);
elsewhere it is portable IR with the same sums.
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .integer_simd import _BYTES64, _I32, _V16I32, _flat, _pointer, i32x8, i32x16
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
