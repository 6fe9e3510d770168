"""The integer forward pass as one compiled call: a program of kernel calls, shared by the threads.

The fast graph's plan (``forward/quantized_engine.py``) reduces a pass to a list of compiled
calls with fixed arguments (``integer_gemm.gemm_tasks``, ``integer_depthwise.depthwise_rows``,
``integer_add.add_bytes``, ...).  Run from Python, each costs ~0.5-1 us of interpreter work, and
a call split over threads opens and closes a parallel region of its own (~2.4-12 us): at batch 1
on two threads V2 0.5/96 int8 ran 0.93 ms where LiteRT takes 0.65.  Here the same calls become
rows of one int64 array (``Program``), run by ``run_program`` in one compiled call: on one
thread, row after row; on ``parts`` threads, in one parallel region whose threads share out each
row's tasks and wait for the row to finish before the next, as the float engine's shared passes
do (``plan.shared_pass``: the same counters, ``sync.py``).

A row is [kind, tasks, the kernel's arguments]: each array as its address and shape (the
program keeps the arrays, ``Program.keep``), each integer as it is, a float32 scalar as the
address of a one-element array.  ``step_tasks`` turns a row's task range back into the kernel's
arguments (a range of GEMM tiles, depthwise output rows, pixels to centre, a block of elements to
add, images to pool) and calls the kernel at its address (``table.py``: each kernel is compiled once, for the one
signature ``SIGNATURES`` gives it).  Addresses inside the pass's input are patched on each run
(``Program.patch``), so the input need not be copied.  A task is taken once, by one thread, so
the bytes are those of one thread running the calls in turn (the tests compare).

Two kinds have no kernel of their own: ``step_tasks`` copies rows of bytes (COPY, a GEMM's
padded output into its tensor) and flips top bits (FLIP, int8 <-> uint8 + 128) itself.  Calls
of other functions stay Python calls between the compiled segments (``Program.add`` refuses
them).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import prange, types

from . import sync
from .integer_add import add_bytes, add_reference_bytes, global_average_bytes
from .integer_conv import conv_tasks
from .integer_conv4 import conv4_tasks
from .integer_depthwise import depthwise_rows
from .integer_depthwise4 import depthwise4_rows
from .integer_dot4 import dot4_split_tasks, dot4_tasks
from .integer_gemm import centre_rows, gemm_tasks
from .jit import kernel
from .plan import LINE, take_tasks
from .table import address, by_address, float32_at, int16_at, int32_2d_at, int32_at, uint8_at

# Row kinds, and each kernel kind's index in ``kernel_table``.
(GEMM_BYTES, GEMM_DOT4, GEMM_DOT4_SPLIT, CONV_BYTES, GEMM_CENTRED, CONV, CENTRE, DEPTHWISE, ADD, ADD_REFERENCE, POOL,
 DEPTHWISE4, COPY, FLIP) = range(14)
KIND, TASKS, ARGS = 0, 1, 2          # a row: its kind, its task count, then the arguments
ROW = 32                             # int64s per row
STEP, PASS = 12, 13                  # ``kernel_table``: step_tasks and program_pass after the twelve kernels
ELEMENTS = 2048                      # elements per task of ADD and FLIP
PIXELS = 64                          # pixels per task of COPY

_U8, _I16, _I32, _F32 = types.uint8[::1], types.int16[::1], types.int32[::1], types.float32[::1]
_P, _I = types.int32[:, ::1], types.int64
_GEMM = (_I, _I, _I, _I, _I16, _I, _P, _F32, _I, _I, _I, _I, _U8)      # after x
_DEPTHWISE = (_U8, _I, _I, _I, _I, _I, _I16, _I32, _I, _I, _I, _I, _I, _I, _P, _F32, _I, _I, _I, _I, _U8)
SIGNATURES = {
    GEMM_BYTES: (gemm_tasks, (_U8, *_GEMM)),
    GEMM_DOT4: (dot4_tasks, (_U8, *_GEMM)),
    GEMM_DOT4_SPLIT: (dot4_split_tasks, (_U8, *_GEMM)),
    CONV_BYTES: (conv4_tasks, (_U8, *_GEMM)),
    GEMM_CENTRED: (gemm_tasks, (_I16, *_GEMM)),
    CONV: (conv_tasks, (_I16, *_GEMM)),
    CENTRE: (centre_rows, (_U8, _I, _I, _I, _I, _I, _I16)),
    DEPTHWISE: (depthwise_rows, _DEPTHWISE),
    DEPTHWISE4: (depthwise4_rows, _DEPTHWISE),
    ADD: (add_bytes, (_U8, _U8, _I, _I, _I, _I, _I, _I, _I, _U8)),
    ADD_REFERENCE: (add_reference_bytes, (_U8, _U8, *(_I,) * 11, _U8)),
    POOL: (global_average_bytes, (_U8, _I, _I, _I, _I, types.float32, _I, _I, _I, _U8)),
}
_ROWS = types.int64[:, ::1]
STEP_TASKS = (types.int64[::1], _I, _I, types.int64[::1])
PROGRAM_PASS = (_ROWS, _I, _I, types.int64[::1], _I, _I, types.int64[::1])
_call_gemm_bytes = by_address("gemm_tasks", SIGNATURES[GEMM_BYTES][1])
_call_gemm_centred = by_address("gemm_tasks", SIGNATURES[GEMM_CENTRED][1])
_call_centre = by_address("centre_rows", SIGNATURES[CENTRE][1])
_call_depthwise = by_address("depthwise_rows", SIGNATURES[DEPTHWISE][1])
_call_add = by_address("add_bytes", SIGNATURES[ADD][1])
_call_add_reference = by_address("add_reference_bytes", SIGNATURES[ADD_REFERENCE][1])
_call_pool = by_address("global_average_bytes", SIGNATURES[POOL][1])
_call_step = by_address("step_tasks", STEP_TASKS)
_call_pass = by_address("program_pass", PROGRAM_PASS)


@kernel()
def step_tasks(row, t0, t1, table):
    """Tasks t0..t1-1 of one program row (``Program``), by its kernel in ``table``."""
    kind = row[KIND]
    a = ARGS
    if kind <= CONV:            # x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zp, lo, hi, out
        w = int16_at(row[a + 6], row[a + 7])
        params = int32_2d_at(row[a + 9], (row[a + 10], row[a + 11]))
        scales = float32_at(row[a + 12], row[a + 13])
        out = uint8_at(row[a + 18], row[a + 19])
        if kind <= CONV_BYTES:                            # (one signature: the same call)
            _call_gemm_bytes(table[kind], (uint8_at(row[a], row[a + 1]), t0, t1, row[a + 4], row[a + 5], w, row[a + 8],
                                           params, scales, row[a + 14], row[a + 15], row[a + 16], row[a + 17], out))
        else:
            _call_gemm_centred(table[kind], (int16_at(row[a], row[a + 1]), t0, t1, row[a + 4], row[a + 5], w,
                                             row[a + 8], params, scales, row[a + 14], row[a + 15], row[a + 16],
                                             row[a + 17], out))
    elif kind == CENTRE:        # x, p0, p1, c_in, zp, kp, out
        p0 = row[a + 2]
        _call_centre(table[kind], (uint8_at(row[a], row[a + 1]), p0 + t0, p0 + t1, row[a + 4], row[a + 5], row[a + 6],
                                   int16_at(row[a + 7], row[a + 8])))
    elif kind == DEPTHWISE or kind == DEPTHWISE4:     # (one signature) x, r0, r1, h, w_in, c, wts, zpw, k, ...
        r0 = row[a + 2]
        _call_depthwise(table[kind], (uint8_at(row[a], row[a + 1]), r0 + t0, r0 + t1, row[a + 4], row[a + 5],
                                      row[a + 6], int16_at(row[a + 7], row[a + 8]), int32_at(row[a + 9], row[a + 10]),
                                      row[a + 11], row[a + 12], row[a + 13], row[a + 14], row[a + 15], row[a + 16],
                                      int32_2d_at(row[a + 17], (row[a + 18], row[a + 19])),
                                      float32_at(row[a + 20], row[a + 21]), row[a + 22], row[a + 23], row[a + 24],
                                      row[a + 25], uint8_at(row[a + 26], row[a + 27])))
    elif kind == ADD or kind == ADD_REFERENCE:      # a, b, the scalars, out: a block of elements
        size = row[a + 1]
        e0 = t0 * ELEMENTS
        e1 = min(size, t1 * ELEMENTS)
        x = uint8_at(row[a], size)[e0:e1]
        y = uint8_at(row[a + 2], size)[e0:e1]
        if kind == ADD:
            _call_add(table[kind], (x, y, row[a + 4], row[a + 5], row[a + 6], row[a + 7], row[a + 8], row[a + 9],
                                    row[a + 10], uint8_at(row[a + 11], size)[e0:e1]))
        else:
            _call_add_reference(table[kind], (x, y, row[a + 4], row[a + 5], row[a + 6], row[a + 7], row[a + 8],
                                              row[a + 9], row[a + 10], row[a + 11], row[a + 12], row[a + 13],
                                              row[a + 14], uint8_at(row[a + 15], size)[e0:e1]))
    elif kind == POOL:          # x, n_img, pixels, c, zp, scale, lo, hi, out_zp, out: one image per task
        per_image = row[a + 3] * row[a + 4]
        x = uint8_at(row[a], row[a + 1])
        out = uint8_at(row[a + 10], row[a + 11])
        scale = float32_at(row[a + 6], 1)[0]
        _call_pool(table[kind], (x[t0 * per_image:t1 * per_image], t1 - t0, row[a + 3], row[a + 4], row[a + 5], scale,
                                 row[a + 7], row[a + 8], row[a + 9], out[t0 * row[a + 4]:t1 * row[a + 4]]))
    elif kind == COPY:          # dst, src, pixels, width (bytes), dst pitch, src pitch: rows of bytes
        width, d_pitch, s_pitch = row[a + 3], row[a + 4], row[a + 5]
        for p in range(t0 * PIXELS, min(row[a + 2], t1 * PIXELS)):
            dst = uint8_at(row[a] + p * d_pitch, width)
            src = uint8_at(row[a + 1] + p * s_pitch, width)
            for i in range(width):
                dst[i] = src[i]
    elif kind == FLIP:          # src, dst, size: int8 <-> uint8 + 128, a block of elements
        e0 = t0 * ELEMENTS
        e1 = min(row[a + 2], t1 * ELEMENTS)
        src = uint8_at(row[a], row[a + 2])
        dst = uint8_at(row[a + 1], row[a + 2])
        for i in range(e0, e1):
            dst[i] = src[i] ^ np.uint8(0x80)


@kernel()
def program_pass(rows, s0, s1, counters, part, parts, table):
    """Thread ``part`` of ``parts`` in ``run_program``'s parallel region, rows s0..s1-1: each row's
    tasks are cut into ``parts`` runs, a thread takes its own run a quarter at a time, then what is
    left of the others', counts what it finished and waits until the row's tasks are all finished
    (``plan.shared_pass``, whose counters these are: one cache line per part and row)."""
    for i in range(s0, s1):
        row = rows[i]
        tasks = row[TASKS]
        base = (i - s0) * parts * LINE
        finished = 0
        k, t0, t1 = take_tasks(counters, base, part, parts, tasks, 0)
        while k < parts:
            _call_step(table[STEP], (row, t0, t1, table))
            finished += t1 - t0
            k, t0, t1 = take_tasks(counters, base, part, parts, tasks, k)
        sync.add(counters, base + part * LINE + 1, finished)
        sync.wait_for(counters, base + 1, parts, LINE, tasks)


@kernel(parallel=True)
def run_program(rows, s0, s1, parts, counters, table):
    """Run program rows s0..s1-1 (``Program``): on the calling thread (``parts`` = 1), or in one
    parallel region of ``parts`` threads sharing each row's tasks (``program_pass``), with
    ``counters`` of at least (s1 - s0) * parts * LINE int64s.  ``table``: ``kernel_table()``."""
    if parts > 1:
        for i in range((s1 - s0) * parts * LINE):
            counters[i] = 0
        for part in prange(parts):      # the index is unsigned in the prange's body
            _call_pass(table[PASS], (rows, s0, s1, counters, np.int64(part), parts, table))
        return
    zero = parts - parts                # int64, as step_tasks takes it
    for i in range(s0, s1):
        _call_step(table[STEP], (rows[i], zero, rows[i, TASKS], table))


_TABLE = np.zeros(PASS + 1, np.int64)
_TABLE_LOCK = threading.Lock()


def kernel_table(kinds=None) -> np.ndarray:
    """The addresses ``run_program`` calls: the kernels of ``SIGNATURES`` by kind, then
    ``step_tasks`` and ``program_pass``.  A kernel is compiled (or loaded from the cache) when a
    program first has a row of its kind (``kinds``; None: all of them, as ``mobilenet-np warmup``
    does): a model's first run compiles the kinds it uses (into an empty cache, 2026-12-02, VNNI:
    V2 0.5/96 int8 and V1 0.5/160 uint8 5 of the 12 each, first runs 5.4 and 6.0 s, where all of
    them took 9.3-10.9 s).  One array for all programs; an entry, once set, does not change."""
    with _TABLE_LOCK:
        if not _TABLE[STEP]:
            _TABLE[STEP] = address(step_tasks, STEP_TASKS)
            _TABLE[PASS] = address(program_pass, PROGRAM_PASS)
        for kind in SIGNATURES if kinds is None else kinds:
            if kind in SIGNATURES and not _TABLE[kind]:
                function, signature = SIGNATURES[kind]
                _TABLE[kind] = address(function, signature)
    return _TABLE


# --- building a program in Python -----------------------------------------------------------

_KINDS = {centre_rows: CENTRE, depthwise_rows: DEPTHWISE, depthwise4_rows: DEPTHWISE4, add_bytes: ADD,
          add_reference_bytes: ADD_REFERENCE, global_average_bytes: POOL, conv_tasks: CONV, conv4_tasks: CONV_BYTES,
          dot4_tasks: GEMM_DOT4, dot4_split_tasks: GEMM_DOT4_SPLIT}


def _kind(function, args) -> int | None:
    if function is gemm_tasks:
        return GEMM_BYTES if args[0].dtype == np.uint8 else GEMM_CENTRED
    if function is np.copyto:
        return COPY
    return _KINDS.get(function)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _tasks(kind: int, args) -> int | None:
    """The row's task count, or None if the call is not one the row can split (a range that does
    not start at 0, operands of different sizes)."""
    if kind <= CONV:
        return args[2] if args[1] == 0 else None
    if kind in (CENTRE, DEPTHWISE, DEPTHWISE4):
        return args[2] - args[1]
    if kind in (ADD, ADD_REFERENCE):
        return -(-args[0].size // ELEMENTS) if args[0].size == args[1].size == args[-1].size else None
    if kind == COPY:
        return -(-args[0].shape[0] // PIXELS)
    # POOL: one task per image
    return args[1] if args[0].size == args[1] * args[2] * args[3] and args[-1].size == args[1] * args[3] else None


class Program:
    """Kernel calls as rows for ``run_program``.  ``add(function, args)`` takes a call as the fast
    graph's plan makes it (function, argument tuple), or returns False if it cannot be a row: the
    function is not one of ``SIGNATURES``' kernels (or ``np.copyto`` of whole byte rows), or an
    argument is not of the type its signature says.  Arrays that lie inside ``inputs`` (the pass's
    input on the run that built the program) are patched to the same place in each run's input
    (``patch``).  ``finish(parts)`` makes the array; ``call(s0, s1)`` is then the compiled call that
    runs rows s0..s1-1.  The program keeps every array a row points into (``keep``)."""

    def __init__(self, inputs: np.ndarray | None = None):
        self.rows, self.patches, self.keep = [], [], []
        self.inputs = None if inputs is None else (_address(inputs), inputs.nbytes)

    def add(self, function, args: tuple) -> bool:
        kind = _kind(function, args)
        if kind is None:
            return False
        fields = self._copy_fields(args) if kind == COPY else self._fields(args, SIGNATURES[kind][1])
        tasks = None if fields is None else _tasks(kind, args)
        if tasks is None:
            return False
        self._append(kind, tasks, fields, args)
        return True

    def add_flip(self, source: np.ndarray, out: np.ndarray) -> bool:
        """A row that flips the top bit of every byte of ``source`` into ``out`` (int8 <-> uint8 + 128)."""
        if not (source.flags.c_contiguous and out.flags.c_contiguous and source.nbytes == out.nbytes
                and source.itemsize == out.itemsize == 1):
            return False
        fields = [(_address(source), True), (_address(out), True), (source.size, False)]
        self._append(FLIP, -(-source.size // ELEMENTS), fields, (source, out))
        return True

    def _append(self, kind: int, tasks: int, fields, arrays) -> None:
        """The row [kind, tasks, field values], noting the fields that are addresses inside the input."""
        row = [kind, tasks]
        for value, is_address in fields:
            if is_address and self.inputs is not None and 0 <= value - self.inputs[0] < self.inputs[1]:
                self.patches.append((len(self.rows), len(row), value - self.inputs[0]))
            row.append(value)
        self.rows.append(row + [0] * (ROW - len(row)))
        self.keep.append(arrays)

    def _fields(self, args, signature):
        """[(value, is an address)] for the arguments, or None if one is not of its type."""
        if len(args) != len(signature):
            return None
        fields = []
        for value, kind in zip(args, signature):
            if isinstance(kind, types.Array):
                if (not isinstance(value, np.ndarray) or value.ndim != kind.ndim or not value.flags.c_contiguous
                        or value.dtype != np.dtype(str(kind.dtype))):
                    return None
                fields += [(_address(value), True)] + [(n, False) for n in value.shape]
            elif kind == types.float32:
                if not isinstance(value, np.float32):
                    return None
                held = np.array([value], np.float32)
                self.keep.append(held)
                fields.append((_address(held), False))
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                fields.append((int(value), False))
            else:
                return None
        return fields if len(fields) <= ROW - ARGS else None

    @staticmethod
    def _copy_fields(args):
        """``np.copyto(dst, src)`` of 2-D arrays whose rows are contiguous runs of bytes (a GEMM's padded
        output into the tensor): dst, src, rows, bytes per row, each one's row pitch."""
        if len(args) != 2:
            return None
        dst, src = args
        if not (isinstance(dst, np.ndarray) and isinstance(src, np.ndarray) and dst.ndim == src.ndim == 2
                and dst.shape == src.shape and dst.dtype == src.dtype and dst.strides[1] == src.strides[1]
                == dst.itemsize):
            return None
        width = dst.shape[1] * dst.itemsize
        return [(_address(dst), True), (_address(src), True), (dst.shape[0], False), (width, False),
                (dst.strides[0], False), (src.strides[0], False)]

    def finish(self, parts: int) -> None:
        self.array = np.array(self.rows, np.int64).reshape(-1, ROW)
        self.parts = parts
        self.counters = np.zeros(max(1, len(self.rows)) * parts * LINE, np.int64)
        self.table = kernel_table({row[KIND] for row in self.rows})

    def call(self, s0: int, s1: int) -> tuple:
        """(run_program, its arguments) for rows s0..s1-1."""
        return run_program, (self.array, s0, s1, self.parts, self.counters, self.table)

    def patch(self, x: np.ndarray) -> None:
        """Point the rows that read the pass's input at ``x`` (C-contiguous, the shape of the input
        the program was built with)."""
        if self.patches:
            base, array = _address(x), self.array
            for r, f, offset in self.patches:
                array[r, f] = base + offset
