"""Keep CPython 3.11-3.13 from mapping and unmapping memory on every call while Numba compiles.

CPython (from 3.11) keeps the locals of running Python functions on a per-thread stack made of
16 KiB chunks, taken from the "arena allocator" (``mmap``).  When a function call crosses from
one chunk into the next, a chunk is mapped; when it returns, the chunk is unmapped.  If a hot
call in a loop happens to sit exactly at a chunk boundary, every call maps and unmaps a chunk
and faults its pages in again (CPython issue gh-142183, fixed in 3.13 and 3.14 in 2026 by
keeping one chunk).  Numba's compiler is deeply recursive Python, and our kernel compile hits
such a boundary: a cold compile of the engine made 6.7 million ``mmap``/``munmap`` pairs and
spent 90 of its 170 s in the kernel (strace; ``MALLOC_*`` settings do not help, as the chunks
bypass malloc).  Which depth thrashes depends on the caller's stack, so no call-site change
fixes it reliably.

The fix here does what CPython's own fix does: it wraps the arena allocator so that the last
small block freed (≤ 64 KiB) is kept and handed back to the next request of the same size.
Everything else goes to the allocator that was installed before, unchanged.  The two wrapper
functions are a few lines of LLVM IR, compiled with llvmlite (Numba's own dependency), because
they run inside CPython's frame push, where no Python code may run.  ``install()`` is called
when the first kernel of this package starts compiling (``jit.py``); it is idempotent, keeps at
most one 64 KiB block, and does nothing outside CPython.  With it the same cold compile took
66 s, 0.9 s of it in the kernel.
"""

from __future__ import annotations

import ctypes
import logging
import sys

_IR = r"""
@old_ctx = global i8* null
@old_alloc = global i8* (i8*, i64)* null
@old_free = global void (i8*, i8*, i64)* null
@kept = global i8* null
@kept_size = global i64 0

define i8* @alloc(i8* %ctx, i64 %size) {
entry:
  %p = load i8*, i8** @kept
  %s = load i64, i64* @kept_size
  %full = icmp ne i8* %p, null
  %same = icmp eq i64 %s, %size
  %hit = and i1 %full, %same
  br i1 %hit, label %reuse, label %fresh
reuse:
  store i8* null, i8** @kept
  ret i8* %p
fresh:
  %f = load i8* (i8*, i64)*, i8* (i8*, i64)** @old_alloc
  %c = load i8*, i8** @old_ctx
  %r = call i8* %f(i8* %c, i64 %size)
  ret i8* %r
}

define void @free(i8* %ctx, i8* %ptr, i64 %size) {
entry:
  %f = load void (i8*, i8*, i64)*, void (i8*, i8*, i64)** @old_free
  %c = load i8*, i8** @old_ctx
  %small = icmp ule i64 %size, 65536
  br i1 %small, label %keep, label %release
keep:
  %p = load i8*, i8** @kept
  %s = load i64, i64* @kept_size
  store i8* %ptr, i8** @kept
  store i64 %size, i64* @kept_size
  %full = icmp ne i8* %p, null
  br i1 %full, label %drop, label %done
drop:
  call void %f(i8* %c, i8* %p, i64 %s)
  ret void
release:
  call void %f(i8* %c, i8* %ptr, i64 %size)
  ret void
done:
  ret void
}
"""


class _ArenaAllocator(ctypes.Structure):
    """CPython's ``PyObjectArenaAllocator``: a context and two function pointers."""
    _fields_ = [("ctx", ctypes.c_void_p), ("alloc", ctypes.c_void_p), ("free", ctypes.c_void_p)]


_installed: list = []      # the JIT engine, module and structs: alive as long as the process


def install() -> bool:
    """Wrap the arena allocator so that a freed small block is reused (see the module
    docstring).  True once installed; False where it does not apply or could not be built."""
    if _installed:
        return True
    if sys.implementation.name != "cpython":
        return False
    try:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = llvm.parse_assembly(_IR)
        module.verify()
        machine = llvm.Target.from_default_triple().create_target_machine()
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        old = _ArenaAllocator()
        ctypes.pythonapi.PyObject_GetArenaAllocator(ctypes.byref(old))
        for name, value in (("old_ctx", old.ctx), ("old_alloc", old.alloc), ("old_free", old.free)):
            ctypes.c_void_p.from_address(engine.get_global_value_address(name)).value = value
        new = _ArenaAllocator(None, engine.get_function_address("alloc"), engine.get_function_address("free"))
    except Exception as exc:       # noqa: BLE001 - an optimisation: compile the slow way rather than fail
        logging.getLogger(__name__).debug("arena allocator wrapper not installed: %s", exc)
        return False
    _installed.extend([engine, module, machine, old, new])
    ctypes.pythonapi.PyObject_SetArenaAllocator(ctypes.byref(new))
    return True
