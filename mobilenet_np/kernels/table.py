"""Calling a compiled layer kernel through its address, so that Numba does not compile it twice.

When one Numba function calls another, Numba links the callee's code into the caller's and
optimises and translates the whole to machine code again.  ``plan.run_plan`` calls the four
layer kernels from two places (its one-thread loop and the body of its ``prange``, which Numba
compiles as a function of its own), so the GEMM, depthwise and stem code went through LLVM three
times: 12 of the engine's 25 s cold compile.

Here ``run_plan`` instead receives a small table of the kernels' machine-code addresses (built
in Python by ``address``, once per process) and calls them through ``by_address``: an
``@intrinsic`` that emits an indirect call with Numba's own calling convention.  Each kernel is
compiled (and cached) once, on its own; ``run_plan`` compiles to a few loops.  (Since 2026-12
the layer kernels are called by ``plan.row_tasks``, itself called by address from the
one-thread loop and from ``plan.shared_pass``, which is the ``prange`` body Numba compiles
again, a single call: ``run_plan`` 4.1 -> 1.8 s, with ``row_tasks`` 0.7 s.)  The price is one
indirect call per layer and task range, against the microseconds a layer takes.

The calling convention must match exactly, so each kernel has one declared signature
(``POINTWISE``, ``DEPTHWISE``, ``STEM``, ``INPUT_ROWS``, ``ROW_TASKS``, ``SHARED_PASS``, ``POOL_TASKS``,
``CHUNK_PASS`` in ``plan.py``): ``address`` compiles
the kernel for exactly that signature, and ``by_address`` refuses, when ``run_plan`` is
compiled, a call whose argument types differ from it.  A wrong address cannot be caught; the
addresses come only from ``address``.

The integer kernels' ``prange`` twins do the same with ``call`` and ``address_for``: Python
takes the address for the types of the very values it hands to the twin, which passes them on
unchanged (19 -> 15 s of their compile).
"""

from __future__ import annotations

from numba import types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic


def address(dispatcher, signature: tuple) -> int:
    """The machine-code address of ``dispatcher`` compiled for ``signature`` (compiled or
    loaded from the kernel cache now if it is not yet), in Numba's calling convention."""
    dispatcher.compile(signature)
    compiled = dispatcher.overloads[tuple(signature)]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)


_ADDRESSES: dict = {}


def address_for(dispatcher, args: tuple) -> int:
    """``address(dispatcher, the Numba types of args)``, remembered per type signature: for a
    caller that hands ``args`` unchanged to a compiled function that calls ``call(address,
    args)``, so that the types at the call are the types the address was compiled for.  Looked
    up by the values' type fingerprints (what Numba's dispatcher itself uses, ~0.2 us each), as
    ``numba.typeof`` took ~110 us for a GEMM's 14 arguments on every parallel call."""
    try:
        key = (dispatcher, tuple(compute_fingerprint(a) for a in args))
    except ValueError:                  # a value without a fingerprint: type it every time
        key = None
    found = _ADDRESSES.get(key)
    if found is None:
        import numba
        found = address(dispatcher, tuple(numba.typeof(a) for a in args))
        if key is not None:
            _ADDRESSES[key] = found
    return found


def _caller(name: str, expected: tuple | None):
    """The intrinsic ``call(address, args)``: an indirect call, in Numba's calling convention,
    of the kernel at ``address`` on the values of the tuple ``args``, returning nothing (the
    kernels never raise: the status is not read).  With ``expected``, argument types other than
    it are refused when the caller is compiled."""

    @intrinsic
    def call(typingctx, address_type, args):
        if not isinstance(args, types.BaseTuple):
            return None
        if expected is not None and tuple(args.types) != expected:
            raise TypingError(f"{name} takes {expected}, called with {tuple(args.types)}")

        def codegen(context, builder, sig, llargs):
            arg_types = list(sig.args[1].types)
            packed = llargs[1]
            values = [builder.extract_value(packed, i) for i in range(len(arg_types))]
            conv = context.call_conv
            fn_type = conv.get_function_type(types.none, arg_types)
            fn = builder.inttoptr(llargs[0], fn_type.as_pointer())
            ret_type = conv.get_return_type(types.none).pointee
            ret = cgutils.alloca_once(builder, ret_type)
            builder.store(cgutils.get_null_value(ret_type), ret)
            excinfo = cgutils.alloca_once(builder, fn_type.args[1].pointee)
            flat = list(conv._get_arg_packer(arg_types).as_arguments(builder, values))
            builder.call(fn, [ret, excinfo] + flat)
            return context.get_dummy_value()
        return types.void(types.int64, args), codegen

    call.__name__ = f"call_{name}"
    return call


#: ``call(address, args)`` with ``address`` from ``address_for(kernel, args)`` on the same values:
#: no declared signature, the types match because the same values reach both.
call = _caller("kernel", None)


def by_address(name: str, signature: tuple):
    """``call`` for the kernel ``name`` with the one ``signature`` its address was taken for
    (``address(kernel, signature)``): other argument types are refused at compile time."""
    return _caller(name, tuple(signature))


def _array_at(dtype, ndim: int):
    """The intrinsic ``at(address, shape)``: a C-contiguous array of ``dtype`` over the memory at
    ``address`` (an int64; ``shape`` an int, or a tuple of ``ndim`` ints), owned by no one: the
    caller keeps the memory alive for as long as the array is used (``integer_program.py``, whose
    programs hold their arrays' addresses).  What ``numba.carray`` does, which needs reference
    counting (our kernels run without, ``jit.py``)."""
    array_type = types.Array(dtype, ndim, "C")

    @intrinsic
    def at(typingctx, address_type, shape_type):
        def codegen(context, builder, sig, args):
            from numba.np.arrayobj import make_array, populate_array
            array = make_array(array_type)(context, builder)
            data = builder.inttoptr(args[0], context.get_value_type(dtype).as_pointer())
            dims = [args[1]] if ndim == 1 else cgutils.unpack_tuple(builder, args[1], ndim)
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(dtype)))
            strides, stride = [], itemsize
            for dim in reversed(dims):
                strides.insert(0, stride)
                stride = builder.mul(stride, dim)
            populate_array(array, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=None)
            return array._getvalue()
        shape = types.intp if ndim == 1 else types.UniTuple(types.intp, ndim)
        return array_type(types.int64, shape), codegen

    at.__name__ = f"{dtype}_{ndim}d_at"
    return at


uint8_at = _array_at(types.uint8, 1)
int16_at = _array_at(types.int16, 1)
int32_at = _array_at(types.int32, 1)
float32_at = _array_at(types.float32, 1)
int32_2d_at = _array_at(types.int32, 2)
