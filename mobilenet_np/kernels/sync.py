"""A barrier for compiled code: the threads of one call meet after every layer.

``plan.run_plan`` with ``parts`` > 1 runs on ``parts`` threads at once, each doing its share of
every layer's tasks; before the next layer reads a layer's output, every thread must have
written its share.  Numba's ``prange`` did this with one parallel region per layer: a
fork-join through its threading layer (OpenMP here), whose sleeping workers took far longer to
wake than a small layer takes when another process kept a core busy, and whose parfor lowering
cost about 3 s of the engine's cold compile.  Instead, the caller's threads (``forward/engine.py``
starts them) each call ``run_plan`` once and meet at ``barrier`` after every layer.

``barrier(sync, parts)``: ``sync`` is an int64 array [arrived, generation, abort] shared by the
threads of one call (zeros at the start).  Each thread reads the generation, then counts itself
in; the last to arrive resets the count and advances the generation, which releases the others.
Waiting threads spin on the generation with the ``pause`` hint for a few microseconds (a layer's
threads normally arrive within that), then call ``sched_yield`` between looks, so a descheduled
partner gets the core back at once.  A nonzero ``abort`` (set by the caller when a thread
failed) releases every waiter.  All accesses are sequentially consistent atomics, so each
thread's writes before the barrier are visible to every thread after it.
"""

from __future__ import annotations

import ctypes
import sys

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ARRIVED, GENERATION, ABORT = 0, 1, 2
SIZE = 8                 # int64s per sync array: the three counters, padded to a cache line
SPINS = 4000             # pause-hinted looks (~20-50 us) before yielding the core between looks

_I64 = ir.IntType(64)
_X86 = llvm.get_process_triple().startswith(("x86_64", "i686", "i386"))
_YIELD = None            # the C function that gives up the core, where the platform has one
if sys.platform != "win32":
    try:
        _YIELD = ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value
        llvm.add_symbol("sched_yield", _YIELD)       # so that JIT-linked (and cached) code finds it
    except (AttributeError, OSError):
        _YIELD = None


def new() -> "np.ndarray":
    """A fresh sync array for one call's threads."""
    import numpy as np
    return np.zeros(SIZE, np.int64)


@intrinsic
def barrier(typingctx, sync, parts):
    """Wait until ``parts`` threads have called ``barrier`` on ``sync`` (see the module)."""
    if not (isinstance(sync, types.Array) and sync.dtype == types.int64 and sync.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        arrived, generation, abort = (builder.gep(data, [ir.Constant(_I64, i)]) for i in (ARRIVED, GENERATION, ABORT))
        parts_value = context.cast(builder, args[1], sig.args[1], types.int64)
        gen = builder.load_atomic(generation, "seq_cst", 8)
        before = builder.atomic_rmw("add", arrived, ir.Constant(_I64, 1), "seq_cst")
        last = builder.icmp_signed("==", before, builder.sub(parts_value, ir.Constant(_I64, 1)))
        with builder.if_else(last) as (release, wait):
            with release:
                builder.store_atomic(ir.Constant(_I64, 0), arrived, "seq_cst", 8)
                builder.atomic_rmw("add", generation, ir.Constant(_I64, 1), "seq_cst")
            with wait:
                _wait(builder, generation, abort, gen)
        return context.get_dummy_value()
    return types.void(sync, parts), codegen


def _wait(builder, generation, abort, gen):
    """Loop until the generation moves on from ``gen`` or ``abort`` is set."""
    spins = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
    check = builder.append_basic_block("barrier.check")
    pause = builder.append_basic_block("barrier.pause")
    done = builder.append_basic_block("barrier.done")
    builder.branch(check)
    builder.position_at_end(check)
    moved = builder.icmp_signed("!=", builder.load_atomic(generation, "seq_cst", 8), gen)
    aborted = builder.icmp_signed("!=", builder.load_atomic(abort, "seq_cst", 8), ir.Constant(_I64, 0))
    builder.cbranch(builder.or_(moved, aborted), done, pause)
    builder.position_at_end(pause)
    count = builder.load(spins)
    builder.store(builder.add(count, ir.Constant(_I64, 1)), spins)
    with builder.if_else(builder.icmp_signed("<", count, ir.Constant(_I64, SPINS))) as (spin, give_up):
        with spin:
            if _X86:
                hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                      "llvm.x86.sse2.pause")
                builder.call(hint, [])
        with give_up:
            if _YIELD is not None:
                yield_ = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                        "sched_yield")
                builder.call(yield_, [])
    builder.branch(check)
    builder.position_at_end(done)
