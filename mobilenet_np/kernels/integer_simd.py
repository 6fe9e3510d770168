"""Integer vectors for the Numba integer kernels: int16 pairs multiplied into int32 sums.

The one operation that makes integer convolutions fast on x86 is ``pmaddwd``: sixteen int16
products, summed in adjacent pairs into eight int32 lanes, in one instruction (twice the
multiply-adds of an eight-lane float FMA).  It is written here in plain, portable LLVM IR --
sign-extend, multiply, add the even lanes to the odd lanes -- a pattern LLVM's x86 backend turns
into ``vpmaddwd`` under AVX2 (and into ordinary multiplies and adds elsewhere; same results).

``I16x16`` is ``<16 x i16>`` and ``I32x8`` is ``<8 x i32>``, as simd.py's ``F32x8``.  Loads and
stores are unaligned, take a flat (1-D, C-contiguous) array and an element index, and are not
bounds-checked.  Integer arithmetic is exact here (no overflow for |int16 products| summed in
int32 over the channel counts of these networks), so no ordering caveat applies.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

_I16, _I32 = ir.IntType(16), ir.IntType(32)
_V16 = ir.VectorType(_I16, 16)
_V8 = ir.VectorType(_I32, 8)
_WIDE = ir.VectorType(_I32, 16)


class I16x16Type(types.Type):
    def __init__(self):
        super().__init__(name="i16x16")


class I32x8Type(types.Type):
    def __init__(self):
        super().__init__(name="i32x8")


i16x16 = I16x16Type()
i32x8 = I32x8Type()


@register_model(I16x16Type)
class _I16x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


@register_model(I32x8Type)
class _I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _flat(array, dtype) -> bool:
    return isinstance(array, types.Array) and array.dtype == dtype and array.ndim == 1


def _pointer(context, builder, array_type, array, index, to):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), to.as_pointer())


@intrinsic
def load_pairs(typingctx, array, index):
    """int16 array[index : index + 16] as a vector (eight channels, two taps each)."""
    if not _flat(array, types.int16):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _V16), align=2)
    return i16x16(array, types.intp), codegen


@intrinsic
def splat_pair(typingctx, array, index):
    """The int16 pair array[index], array[index + 1] repeated in all eight 32-bit slots."""
    if not _flat(array, types.int16):
        return None

    def codegen(context, builder, sig, args):
        pair = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _I32), align=2)
        v = builder.insert_element(ir.Constant(_V8, ir.Undefined), pair, ir.Constant(_I32, 0))
        v = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
        return builder.bitcast(v, _V16)
    return i16x16(array, types.intp), codegen


@intrinsic
def zeros(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8, [0] * 8)
    return i32x8(), codegen


@intrinsic
def madd(typingctx, acc, a, b):
    """acc + (a[2i] * b[2i] + a[2i+1] * b[2i+1]) in each int32 lane i (``pmaddwd``, then add)."""
    def codegen(context, builder, sig, args):
        products = builder.mul(builder.sext(args[1], _WIDE), builder.sext(args[2], _WIDE))
        even = builder.shuffle_vector(products, products, ir.Constant(ir.VectorType(_I32, 8), list(range(0, 16, 2))))
        odd = builder.shuffle_vector(products, products, ir.Constant(ir.VectorType(_I32, 8), list(range(1, 16, 2))))
        return builder.add(args[0], builder.add(even, odd))
    return i32x8(i32x8, i16x16, i16x16), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """int32 array[index : index + 8] = vector."""
    if not _flat(array, types.int32):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _pointer(context, builder, sig.args[0], args[0], args[1], _V8), align=4)
        return context.get_dummy_value()
    return types.void(array, types.intp, i32x8), codegen
