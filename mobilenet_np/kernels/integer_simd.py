"""Integer vectors for the Numba integer kernels: int16 pairs multiplied into int32 sums.

The one operation that makes integer convolutions fast on x86 is ``pmaddwd``: sixteen int16
products, summed in adjacent pairs into eight int32 lanes, in one instruction (twice the
multiply-adds of an eight-lane float FMA).  It is written here in plain, portable LLVM IR --
sign-extend, multiply, add the even lanes to the odd lanes -- a pattern LLVM's x86 backend turns
into ``vpmaddwd`` under AVX2 (and into ordinary multiplies and adds elsewhere; same results).

``I16x16`` is ``<16 x i16>`` and ``I32x8`` is ``<8 x i32>``, as simd.py's ``F32x8``.
``requantize`` is TFLite's fixed-point rescaling of eight sums at once (``vpmuldq``,
``vpsravd`` and friends under AVX2).  Loads and stores are unaligned, take a flat (1-D,
C-contiguous) array and an element index, and are not bounds-checked.  Integer arithmetic is exact here (no overflow for |int16 products| summed in
int32 over the channel counts of these networks), so no ordering caveat applies.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .simd import f32x8

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


_V16I32 = ir.VectorType(_I32, 16)
_BYTES64 = ir.VectorType(ir.IntType(8), 64)


class I32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="i32x16")


i32x16 = I32x16Type()


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16I32)


def _flat(array, dtype) -> bool:
    return isinstance(array, types.Array) and array.dtype == dtype and array.ndim == 1


def _pointer(context, builder, array_type, array, index, to):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), to.as_pointer())


def _loader(element, vector, vector_type, align: int, doc: str):
    """An intrinsic ``load(array, index)``: a flat ``element`` array's lanes from ``index`` on."""
    @intrinsic
    def load(typingctx, array, index):
        if not _flat(array, element):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], vector), align=align)
        return vector_type(array, types.intp), codegen
    load.__doc__ = doc
    return load


load_pairs = _loader(types.int16, _V16, i16x16, 2,
                     "int16 array[index : index + 16] as a vector (eight channels, two taps each).")


@intrinsic
def splat_pair(typingctx, array, index):
    """The int16 pair array[index], array[index + 1] repeated in all eight 32-bit slots; from a
    uint8 or int8 array, the two bytes widened to int16 first (zero- or sign-extended)."""
    if not (_flat(array, types.int16) or _flat(array, types.uint8) or _flat(array, types.int8)):
        return None
    wide = array.dtype == types.int16
    signed = array.dtype == types.int8

    def codegen(context, builder, sig, args):
        if wide:
            pair = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _I32), align=2)
        else:
            v2 = ir.VectorType(ir.IntType(8), 2)
            raw = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], v2), align=1)
            extend = builder.sext if signed else builder.zext
            pair = builder.bitcast(extend(raw, ir.VectorType(_I16, 2)), _I32)
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


def _lanes(value, n=8):
    return ir.Constant(ir.VectorType(_I32, n), [value] * n)


@intrinsic
def requantize(typingctx, acc, bias, multiplier, left, right, zero_point, lo, hi, away):
    """TFLite's requantization of eight int32 sums, lane by lane: (acc + bias) << left, the
    doubling high multiply by ``multiplier`` (rounded, ties up), a rounding right shift by
    ``right`` (ties away from zero if ``away`` is 1, up if 0: LiteRT's optimized kernels),
    plus ``zero_point``, clamped to [lo, hi].  The 64-bit product is formed from sign-extended
    halves (``vpmuldq``); its high word is taken with a logical shift and a truncation, which
    equals the arithmetic shift's low 32 bits."""
    def codegen(context, builder, sig, args):
        return _requantize_ir(builder, *args[:5], *(builder.trunc(a, _I32) for a in args[5:]))
    return i32x8(i32x8, i32x8, i32x8, i32x8, i32x8, types.int64, types.int64, types.int64, types.int64), codegen


@intrinsic
def requantize_fp32(typingctx, acc, bias, scale, zero_point, lo, hi):
    """XNNPACK's requantization of eight int32 sums: float32(acc + bias) * scale (a float32
    vector, one scale per channel), clamped to [lo - zero_point, hi - zero_point] in float,
    rounded to nearest with ties to even (``llvm.rint``), plus ``zero_point``."""
    def codegen(context, builder, sig, args):
        return _requantize_fp32_ir(builder, args[0], args[1], args[2], *(builder.trunc(a, _I32) for a in args[3:]))
    return i32x8(i32x8, i32x8, f32x8, types.int64, types.int64, types.int64), codegen


def _requantize_ir(builder, acc, bias, multiplier, left, right, zero_point, lo, hi, away):
    """``requantize``'s IR, on vectors of 8 or 16 lanes; the scalars are i32; ``bias`` None: already in acc."""
    n, vec = acc.type.count, acc.type
    v64 = ir.VectorType(ir.IntType(64), n)
    lifted = builder.shl(acc if bias is None else builder.add(acc, bias), left)
    product = builder.mul(builder.sext(lifted, v64), builder.sext(multiplier, v64))
    # TFLite adds 2^30 (1 - 2^30 if the product is negative) and divides by 2^31 truncating toward zero; both
    # cases equal floor((product + 2^30) / 2^31) (a negative total t = p + 1 - 2^30 gives ceil(t / 2^31) =
    # floor((t + 2^31 - 1) / 2^31)): one add and a shift (the compares and selects were ~10% of a stem call)
    total = builder.add(product, ir.Constant(v64, [1 << 30] * n))
    high = builder.trunc(builder.lshr(total, ir.Constant(v64, [31] * n)), vec)
    mask = builder.sub(builder.shl(_lanes(1, n), right), _lanes(1, n))
    negative_tie_bump = builder.and_(builder.zext(builder.icmp_signed("<", high, _lanes(0, n)), vec),
                                     _broadcast(builder, away, n))
    threshold = builder.add(builder.ashr(mask, _lanes(1, n)), negative_tie_bump)
    round_up = builder.zext(builder.icmp_signed(">", builder.and_(high, mask), threshold), vec)
    value = builder.add(builder.add(builder.ashr(high, right), round_up), _broadcast(builder, zero_point, n))
    low, high_ = _broadcast(builder, lo, n), _broadcast(builder, hi, n)
    value = builder.select(builder.icmp_signed("<", value, low), low, value)
    return builder.select(builder.icmp_signed(">", value, high_), high_, value)


def _requantize_fp32_ir(builder, acc, bias, scale, zero_point, lo, hi):
    """``requantize_fp32``'s IR, on vectors of 8 or 16 lanes; the scalars are i32; ``bias`` None: already in acc."""
    n, vec = acc.type.count, acc.type
    vf = ir.VectorType(ir.FloatType(), n)
    value = builder.fmul(builder.sitofp(acc if bias is None else builder.add(acc, bias), vf), scale)
    low = builder.sitofp(_broadcast(builder, builder.sub(lo, zero_point), n), vf)
    high = builder.sitofp(_broadcast(builder, builder.sub(hi, zero_point), n), vf)
    value = builder.select(builder.fcmp_ordered("<", value, low), low, value)
    value = builder.select(builder.fcmp_ordered(">", value, high), high, value)
    rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf]), f"llvm.rint.v{n}f32")
    return builder.add(builder.fptosi(builder.call(rint, [value]), vec), _broadcast(builder, zero_point, n))


def _broadcast(builder, scalar, n=8):
    vec = ir.VectorType(_I32, n)
    v = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(vec, [0] * n))


@intrinsic
def store_bytes(typingctx, array, index, vector):
    """uint8 or int8 array[index : index + n] = the vector's n lanes (8 or 16, already in the type's range)."""
    if not (_flat(array, types.int8) or _flat(array, types.uint8)) or vector not in (i32x8, i32x16):
        return None
    n = 16 if vector == i32x16 else 8

    def codegen(context, builder, sig, args):
        bytes_ = ir.VectorType(ir.IntType(8), n)
        builder.store(builder.trunc(args[2], bytes_), _pointer(context, builder, sig.args[0], args[0], args[1], bytes_),
                      align=1)
        return context.get_dummy_value()
    return types.void(array, types.intp, vector), codegen


@intrinsic
def mul_add(typingctx, acc, a, b):
    """acc + a * b in each int32 lane (eight or sixteen).  On the depthwise kernel's operands (bytes and int16
    weights widened to int32) LLVM emits ``vpmaddwd`` with zero high halves rather than
    ``vpmulld`` (2026-12-02: 39 ``vpmaddwd`` and one ``vpmulld`` in ``depthwise_rows``).  Pairing
    two rows' taps in one ``vpmaddwd`` instead (eight input bytes of each row interleaved) ran
    1.5-2x slower: the interleaving shuffles cost more than the multiplies they saved."""
    if acc not in (i32x8, i32x16) or a != acc or b != acc:
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], builder.mul(args[1], args[2]))
    return acc(acc, acc, acc), codegen


@intrinsic
def add(typingctx, a, b):
    """a + b in each int32 lane (eight or sixteen)."""
    if a not in (i32x8, i32x16) or b != a:
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])
    return a(a, a), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """int32 array[index : index + 8] = the vector."""
    if not _flat(array, types.int32):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _pointer(context, builder, sig.args[0], args[0], args[1], _V8), align=4)
        return context.get_dummy_value()
    return types.void(array, types.intp, i32x8), codegen


@intrinsic
def insert(typingctx, vector, lane, value):
    """The vector with int32 lane ``lane`` replaced by ``value`` (the channel tails: lane by lane)."""
    def codegen(context, builder, sig, args):
        return builder.insert_element(args[0], builder.trunc(args[2], _I32), builder.trunc(args[1], _I32))
    return i32x8(i32x8, types.intp, types.int64), codegen


@intrinsic
def extract(typingctx, vector, lane):
    """int32 lane ``lane`` of the vector (as int64)."""
    def codegen(context, builder, sig, args):
        return builder.sext(builder.extract_element(args[0], builder.trunc(args[1], _I32)), ir.IntType(64))
    return types.int64(i32x8, types.intp), codegen


# How sums become output bytes: TFLite's reference kernels, its optimized kernels (ties of the
# rounding shift go up), or XNNPACK (float32 scale, ties to even).  See forward/quantized.py.
REFERENCE, OPTIMIZED, XNNPACK = 0, 1, 2


@intrinsic
def requantized(typingctx, acc, params, scales, rounding, c, zero_point, lo, hi):
    """Eight sums of channels c..c+7 (sixteen, c..c+15, from an ``i32x16``) requantized to output
    values (int32 lanes, in the type's range) by ``rounding`` (REFERENCE, OPTIMIZED or XNNPACK,
    chosen by a branch).  ``params`` [4, C] int32 rows: bias, multiplier, left shift, right
    shift; ``scales`` [C] float32: XNNPACK's scale per channel.  An intrinsic rather than a
    Numba function inlined at every call site: Numba's IR-level inlining re-ran its front end
    for each of the dozen call sites of a kernel and made most of the integer kernels' compile
    time; the IR here is the same (LLVM hoists the branch out of the tile loops as it did
    before)."""
    if not (isinstance(params, types.Array) and params.dtype == types.int32 and params.ndim == 2
            and params.layout == "C" and _flat(scales, types.float32)) or acc not in (i32x8, i32x16):
        return None
    n = 16 if acc == i32x16 else 8
    vec = ir.VectorType(_I32, n)

    def codegen(context, builder, sig, args):
        acc, params, scales = args[:3]
        rounding, c, zero_point, lo, hi = args[3:]
        table = context.make_array(sig.args[1])(context, builder, params)
        width = cgutils.unpack_tuple(builder, table.shape, 2)[1]

        def row(r):
            at = builder.add(builder.mul(width, ir.Constant(width.type, r)), c)
            return builder.load(builder.bitcast(builder.gep(table.data, [at]), vec.as_pointer()), align=4)

        vf = ir.VectorType(ir.FloatType(), n)
        return requantize_by(builder, acc, row(0), rounding, *(builder.trunc(a, _I32) for a in (zero_point, lo, hi)),
                             lambda: builder.load(_pointer(context, builder, sig.args[2], scales, c, vf), align=4),
                             lambda: (row(1), row(2), row(3)))
    return acc(acc, params, scales, types.int64, types.intp, types.int64, types.int64, types.int64), codegen


def requantize_by(builder, acc, bias, rounding, zero_point, lo, hi, scale, fixed):
    """The IR of ``requantized``: the sums requantized by ``rounding`` (a run-time value; a branch
    that LLVM hoists out of the loops), XNNPACK's float32 scale (``scale()``, its vector, made in
    that branch) or TFLite's fixed point (``fixed()``: multiplier, left and right shift vectors);
    ``bias`` None: already in the sums (``integer_wide.requantized_block``)."""
    with builder.if_else(builder.icmp_signed("==", rounding, ir.Constant(rounding.type, XNNPACK))) as (fp, exact):
        with fp:
            by_scale = _requantize_fp32_ir(builder, acc, bias, scale(), zero_point, lo, hi)
            from_fp = builder.basic_block
        with exact:
            away = builder.zext(builder.icmp_signed("==", rounding, ir.Constant(rounding.type, REFERENCE)), _I32)
            by_shift = _requantize_ir(builder, acc, bias, *fixed(), zero_point, lo, hi, away)
            from_fixed = builder.basic_block
    value = builder.phi(acc.type)
    value.add_incoming(by_scale, from_fp)
    value.add_incoming(by_shift, from_fixed)
    return value


@intrinsic
def centre16(typingctx, x, at, zero_point, out, to):
    """out[to : to + 16] = x[at : at + 16] - zero_point: uint8 or int8 bytes widened to int16
    (the centring pass; a scalar loop with Numba's index arithmetic did not vectorize)."""
    if not ((_flat(x, types.int8) or _flat(x, types.uint8)) and _flat(out, types.int16)):
        return None
    signed = x.dtype == types.int8

    def codegen(context, builder, sig, args):
        v8 = ir.VectorType(ir.IntType(8), 16)
        raw = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], v8), align=1)
        wide = builder.sext(raw, _V16) if signed else builder.zext(raw, _V16)
        zp = builder.insert_element(ir.Constant(_V16, ir.Undefined), builder.trunc(args[2], _I16), ir.Constant(_I32, 0))
        zp = builder.shuffle_vector(zp, zp, ir.Constant(ir.VectorType(_I32, 16), [0] * 16))
        builder.store(builder.sub(wide, zp), _pointer(context, builder, sig.args[3], args[3], args[4], _V16), align=2)
        return context.get_dummy_value()
    return types.void(x, types.intp, types.int64, out, types.intp), codegen
