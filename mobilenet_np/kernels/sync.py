"""Atomic counters for Numba kernels whose threads share out work: three LLVM instructions.

``plan.run_plan`` runs a forward pass on several threads in one parallel region for the whole
pass rather than one per layer (a region costs ~2.4 us to open and close with OpenMP's threads
already spinning; a V2 plan has 54 rows).  Inside it, the threads take each layer's tasks a few
at a time from shared counters (``add``), count the tasks they finish on others (``add``), and
wait for those counts (``load``) before the next layer reads what this one wrote.

Why intrinsics: a plain read of an array element in a loop that waits for another thread may be
read once and kept in a register (nothing in the loop writes it), and plain writes may be moved
past the count that announces them.  ``load`` is an acquire load and ``add`` a read-modify-write
with acquire-release order, so whatever a thread wrote before counting it finished is visible to
a thread whose ``load`` sees the new count.  ``pause`` is x86's spin-wait hint (it lets the
core's other work run and saves power while waiting); elsewhere it does nothing.

Counters are int64 elements of a 1-D C-contiguous array; indices are not bounds-checked.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import kernel

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _is_counters(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1


def _pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def load(typingctx, counters, index):
    """counters[index], read with acquire order."""
    if not _is_counters(counters):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_pointer(context, builder, sig.args[0], args[0], args[1]), "acquire", 8)
    return types.int64(counters, types.intp), codegen


@intrinsic
def add(typingctx, counters, index, amount):
    """counters[index] += amount, atomically, with acquire-release order; returns the value
    before.  To take tasks (the old value is the first one taken) and to count finished ones
    (what this thread wrote before is seen by whoever ``load``s the new count)."""
    if not _is_counters(counters):
        return None

    def codegen(context, builder, sig, args):
        amount_ = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", _pointer(context, builder, sig.args[0], args[0], args[1]), amount_,
                                  "acq_rel")
    return types.int64(counters, types.intp, amount), codegen


@intrinsic
def pause(typingctx):
    """The spin-wait hint (x86 ``pause``); nothing on other CPUs."""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@kernel(inline=True)
def wait_for(counters, at, parts, stride, total):
    """Spin (``pause``) until counters[at], counters[at + stride], ... (``parts`` of them) add
    up to at least ``total``: the tasks of one step finished by every thread (``plan.shared_pass``,
    ``integer_program.program_pass``)."""
    while True:
        done = 0
        for q in range(parts):
            done += load(counters, at + q * stride)
        if done >= total:
            return
        pause()
