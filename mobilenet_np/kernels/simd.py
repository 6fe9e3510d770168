"""Float32 vectors for Numba kernels: a handful of LLVM intrinsics, nothing more.

Why this exists: Numba cannot tell LLVM that two arrays do not overlap, so a loop that keeps
sums in an output array reloads and re-stores them on every step, and LLVM will not keep a
matrix tile's accumulators in registers on its own.  With an explicit vector type, a kernel
names its accumulators as local variables, and LLVM keeps them in registers: that is what lets
the 1x1 convolution run as fast as a BLAS GEMM.

``F32Vec`` is LLVM's ``<LANES x float>``.  ``LANES`` is 16 on a CPU with AVX-512 (one zmm
register: twice the multiply-adds per instruction of AVX2's ymm, which is what XNNPACK uses
there too) and 8 elsewhere (one AVX register with AVX2; two SSE or NEON registers elsewhere,
slower, equally correct); ``MOBILENET_NP_VECTOR_LANES=8`` or ``16`` chooses.  The width changes
no result: every output element is the same chain of operations in its own lane.  All loads
and stores are unaligned and take a flat (1-D, C-contiguous) float32 array and an element
index; nothing is bounds-checked, so callers keep ``index + LANES <= len(array)``, except where
a kernel says it reads past a row's end (its caller then leaves slack after the array).
``fma`` rounds once (like the ``contract`` fastmath flag in ``jit.py``); there is no
reassociation: every lane sums in the order the kernel writes.
"""

from __future__ import annotations

import os

import numba
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


def cpu_features() -> set[str]:
    """The CPU features Numba compiles for ("avx512f", ...): NUMBA_CPU_FEATURES when set, none
    beyond the baseline for a named (portable) NUMBA_CPU_NAME, else the host's."""
    features = numba.config.CPU_FEATURES
    if features is None:
        if numba.config.CPU_NAME not in (None, "host"):
            return set()
        try:
            features = binding.get_host_cpu_features().flatten()
        except RuntimeError:                   # no feature list on this platform
            return set()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def vector_lanes() -> int:
    """16 where Numba compiles for a CPU with AVX-512F, else 8; ``MOBILENET_NP_VECTOR_LANES``
    (8 or 16) overrides (16 on a CPU without AVX-512 runs, slower, as two or four registers)."""
    forced = os.environ.get("MOBILENET_NP_VECTOR_LANES", "").strip()
    if forced in ("8", "16"):
        return int(forced)
    return 16 if "avx512f" in cpu_features() else 8


LANES = vector_lanes()
_VEC = ir.VectorType(ir.FloatType(), LANES)
_I32 = ir.IntType(32)


class F32VecType(types.Type):
    def __init__(self):
        super().__init__(name=f"f32x{LANES}")


f32v = F32VecType()


@register_model(F32VecType)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


class F32x8Type(types.Type):
    """``<8 x float>`` whatever LANES is: the integer kernels' float scales (integer_simd.py)."""
    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = F32x8Type()


@register_model(F32x8Type)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), 8))


def _vector_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), _VEC.as_pointer())


def _splat(builder, scalar):
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _llvm_call(builder, name, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * len(args)), name)
    return builder.call(fn, args)


def _relu6(builder, v):
    """min(max(v, 0), 6) lane-wise (maxnum/minnum: a NaN lane becomes 0)."""
    n = v.type.count
    name = f"v{n}f32"
    fn_type = ir.FunctionType(v.type, [v.type, v.type])
    zero = ir.Constant(v.type, [0.0] * n)
    six = ir.Constant(v.type, [6.0] * n)
    maxnum = cgutils.get_or_insert_function(builder.module, fn_type, "llvm.maxnum." + name)
    minnum = cgutils.get_or_insert_function(builder.module, fn_type, "llvm.minnum." + name)
    return builder.call(minnum, [builder.call(maxnum, [v, zero]), six])


def _is_flat_f32(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1


def _when(builder, condition, compute, otherwise):
    """``compute()`` if ``condition`` else the value ``otherwise``, as a branch: what
    ``compute`` emits (a load, say) runs only when the condition holds."""
    with builder.if_else(condition) as (then, orelse):
        with then:
            value = compute()
            then_block = builder.basic_block
        with orelse:
            else_block = builder.basic_block
    out = builder.phi(otherwise.type)
    out.add_incoming(value, then_block)
    out.add_incoming(otherwise, else_block)
    return out


@intrinsic
def load(typingctx, array, index):
    """array[index : index + 8] as a vector."""
    if not _is_flat_f32(array):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vector_pointer(context, builder, sig.args[0], args[0], args[1]), align=4)
    return f32v(array, types.intp), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """array[index : index + 8] = vector."""
    if not _is_flat_f32(array):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vector_pointer(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()
    return types.void(array, types.intp, f32v), codegen


@intrinsic
def load_inside(typingctx, array, index, ix, width, checked):
    """array[index : index + 8], or zeros when ``checked`` and ix lies outside [0, width) (a
    column in a convolution's zero padding; nothing is read then).  An intrinsic rather than an
    inlined helper: it lowers in place, where each inlined call site costs the compiler a pass
    over the helper's code."""
    if not _is_flat_f32(array):
        return None

    def codegen(context, builder, sig, args):
        arr, at, col, width_, check = args
        col = context.cast(builder, col, sig.args[2], types.intp)
        width_ = context.cast(builder, width_, sig.args[3], types.intp)
        inside = builder.and_(builder.icmp_signed(">=", col, ir.Constant(col.type, 0)),
                              builder.icmp_signed("<", col, width_))
        read = builder.or_(builder.not_(check), inside)
        return _when(builder, read, lambda: builder.load(_vector_pointer(context, builder, sig.args[0], arr, at),
                                                          align=4), ir.Constant(_VEC, [0.0] * LANES))
    return f32v(array, types.intp, ix, width, types.boolean), codegen


def _with_residual(context, builder, vector, residual_at, add):
    """vector + the LANES floats at residual_at if ``add``, else vector (nothing read then)."""
    return _when(builder, add, lambda: builder.fadd(
        vector, builder.load(builder.bitcast(residual_at, _VEC.as_pointer()), align=4)), vector)


def _lane_mask(builder, count, first):
    """Lanes i with first + i < count (an i64): the valid lanes of a vector at the end of a row."""
    i64s = ir.VectorType(ir.IntType(64), LANES)
    count = builder.insert_element(ir.Constant(i64s, ir.Undefined), count, ir.Constant(_I32, 0))
    count = builder.shuffle_vector(count, count, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))
    return builder.icmp_signed("<", ir.Constant(i64s, [first + i for i in range(LANES)]), count)


def _masked(builder, name, args):
    """llvm.masked.load / llvm.masked.store: only the lanes of the mask touch memory (AVX-512's
    masked moves, AVX's vmaskmovps)."""
    arg_types = [a.type for a in args]
    result = _VEC if name == "load" else ir.VoidType()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, arg_types),
                                        f"llvm.masked.{name}.v{LANES}f32.p0")
    return builder.call(fn, args)


def _store_lanes(builder, value, pointer, mask):
    _masked(builder, "store", [value, pointer, ir.Constant(_I32, 4), mask])


@intrinsic
def emit_panel(typingctx, out, index, lo, hi, columns, relu6, residual, add_residual):
    """Finish one pixel's 2 x LANES GEMM accumulators (a panel: lanes 0..LANES-1 in ``lo``, the
    next LANES in ``hi``): lane c becomes act(v[c] + residual[index + c]) (the add only if
    ``add_residual``, ReLU6 only if ``relu6``), stored to out[index + c] for c < ``columns``.
    When fewer than 2 x LANES columns are valid (C_out not a multiple of the panel), masked
    loads and stores read and write nothing past ``columns``.  An intrinsic, as
    ``load_inside``: the same code as an inlined Numba helper made the GEMM's compile 7x slower
    (13 call sites, each a pass of Numba's inliner over the helper's branches and loop)."""
    if not (_is_flat_f32(out) and _is_flat_f32(residual)):
        return None
    sig = types.void(out, types.intp, f32v, f32v, types.intp, types.boolean, residual, types.boolean)

    def codegen(context, builder, sig, args):
        out_, at, lo_, hi_, columns_, relu6_, residual_, add = args
        out_data = context.make_array(sig.args[0])(context, builder, out_).data
        res_data = context.make_array(sig.args[6])(context, builder, residual_).data

        def element(data, first):
            return builder.gep(data, [builder.add(at, ir.Constant(at.type, first))])

        def pointer(data, first):
            return builder.bitcast(element(data, first), _VEC.as_pointer())

        def whole(vector, first):
            v = _with_residual(context, builder, vector, element(res_data, first), add)
            v = builder.select(relu6_, _relu6(builder, v), v)
            builder.store(v, pointer(out_data, first), align=4)

        def lanes(vector, first):
            mask = _lane_mask(builder, columns_, first)
            v = _when(builder, add, lambda: builder.fadd(vector, _masked(builder, "load", [
                pointer(res_data, first), ir.Constant(_I32, 4), mask, ir.Constant(_VEC, [0.0] * LANES)])), vector)
            _store_lanes(builder, builder.select(relu6_, _relu6(builder, v), v), pointer(out_data, first), mask)

        with builder.if_else(builder.icmp_signed(">=", columns_, ir.Constant(at.type, 2 * LANES))) as (full, part):
            with full:
                whole(lo_, 0)
                whole(hi_, LANES)
            with part:
                lanes(lo_, 0)
                lanes(hi_, LANES)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def store_act_n(typingctx, array, index, vector, relu6, count):
    """array[index : index + count] = the first ``count`` lanes of relu6(vector) if ``relu6``
    else of vector: a whole store when count >= LANES, else a masked one (the last channels of
    a row whose channel count is not a multiple of LANES)."""
    if not _is_flat_f32(array):
        return None

    def codegen(context, builder, sig, args):
        arr, at, vector_, relu6_, count_ = args
        value = builder.select(relu6_, _relu6(builder, vector_), vector_)
        ptr = _vector_pointer(context, builder, sig.args[0], arr, at)
        count_ = context.cast(builder, count_, sig.args[4], types.int64)
        with builder.if_else(builder.icmp_signed(">=", count_, ir.Constant(count_.type, LANES))) as (full, part):
            with full:
                builder.store(value, ptr, align=4)
            with part:
                _store_lanes(builder, value, ptr, _lane_mask(builder, count_, 0))
        return context.get_dummy_value()
    return types.void(array, types.intp, f32v, types.boolean, count), codegen


@intrinsic
def splat_at(typingctx, array, index):
    """A vector with every lane equal to array[index] (one broadcast load; unlike ``array[i]``
    in Numba, no negative-index wraparound arithmetic on the hot path)."""
    if not _is_flat_f32(array):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return _splat(builder, builder.load(builder.gep(data, [args[1]]), align=4))
    return f32v(array, types.intp), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c in every lane, rounded once."""
    def codegen(context, builder, sig, args):
        return _llvm_call(builder, f"llvm.fma.v{LANES}f32", list(args))
    return f32v(f32v, f32v, f32v), codegen


def _fmas(builder, pairs):
    return [_llvm_call(builder, f"llvm.fma.v{LANES}f32", list(p)) for p in pairs]


@intrinsic
def fma2(typingctx, v, w0, w1, lo, hi):
    """(v * w0 + lo, v * w1 + hi): one input value times a panel's weight row (two vectors), into
    one pixel's two accumulators (the GEMM's step).  This and ``feed3``/``load3`` are intrinsics
    rather than inlined helpers for the compile time only (see ``emit_panel``)."""
    def codegen(context, builder, sig, args):
        v_, w0_, w1_, lo_, hi_ = args
        return context.make_tuple(builder, sig.return_type, _fmas(builder, [(v_, w0_, lo_), (v_, w1_, hi_)]))
    return types.UniTuple(f32v, 2)(f32v, f32v, f32v, f32v, f32v), codegen


@intrinsic
def feed3(typingctx, x, wa, wb, wc, left, mid, right):
    """(x * wc + left, x * wb + mid, x * wa + right): at stride 1 a depthwise input column is
    the last tap of the pixel two to its left, the middle one of its left neighbour and the
    first of its own pixel."""
    def codegen(context, builder, sig, args):
        x_, wa_, wb_, wc_, left_, mid_, right_ = args
        sums = _fmas(builder, [(x_, wc_, left_), (x_, wb_, mid_), (x_, wa_, right_)])
        return context.make_tuple(builder, sig.return_type, sums)
    return types.UniTuple(f32v, 3)(f32v, f32v, f32v, f32v, f32v, f32v, f32v), codegen


@intrinsic
def load3(typingctx, array, index, step):
    """(array[index:index+8], array[index+step:...], array[index+2*step:...]): a depthwise tap
    row's three weight vectors."""
    if not _is_flat_f32(array):
        return None

    def codegen(context, builder, sig, args):
        arr, at, step_ = args
        at = context.cast(builder, at, sig.args[1], types.intp)
        step_ = context.cast(builder, step_, sig.args[2], types.intp)
        loads = []
        for k in range(3):
            i = builder.add(at, builder.mul(step_, ir.Constant(at.type, k)))
            loads.append(builder.load(_vector_pointer(context, builder, sig.args[0], arr, i), align=4))
        return context.make_tuple(builder, sig.return_type, loads)
    return types.UniTuple(f32v, 3)(array, types.intp, types.intp), codegen


@intrinsic
def twice_minus_one(typingctx, a):
    """a * 2 - 1 in every lane, a multiply then a subtraction, as NumPy computes it."""
    def codegen(context, builder, sig, args):
        two = ir.Constant(_VEC, [2.0] * LANES)
        one = ir.Constant(_VEC, [1.0] * LANES)
        return builder.fsub(builder.fmul(args[0], two), one)
    return f32v(f32v), codegen
