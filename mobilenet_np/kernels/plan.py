"""The whole network in one compiled call: the plan runner, the input row and the pool.

A plan (rows built by ``rows.plan_row``; ``forward/engine.py`` builds them from the layer list)
has one row per layer.  ``run_plan`` walks the rows and hands each to its layer's task loop
(``gemm.pointwise_tiles``, ``depthwise.depthwise_rows``, ``stem.stem_tasks``, ``input_rows``),
with its operands sliced out of three rotating activation buffers and one flat array each of
weights, biases and stem tap offsets.  Row 0 of a plan (``KIND_INPUT``) maps the images to
x * 2 - 1 inside the stem's zero padding.

``run_plan`` is the engine's one entry point.  With ``parts`` = 1 it runs every layer on the
calling thread without touching the parallel runtime.  With ``parts`` > 1 it opens one parallel
region for the whole call (a ``prange`` over the parts; one per layer cost ~2.4 us each, ~130 us
per V2 image), in which each thread runs ``shared_pass``: every layer's tasks, cut into
``parts`` contiguous runs, are taken from atomic counters (``sync.py``), a thread's own run
first, and each thread waits until the layer's tasks are all finished before the next one;
or, with ``whole`` set, ``chunk_pass``: each thread takes whole chunks of images and runs them
alone, layer after layer, on its own buffers.  It runs a batch a few images per pass and, if
asked, averages each pass's last output into ``pooled`` (``pool_tasks``).  What a thread does with a range of one row's tasks (slice the
operands, call the layer kernel) is ``row_tasks``, a kernel of its own called by address from
the one-thread loop and from ``shared_pass``: Numba's parfor lowering compiles a ``prange``
body once more as a function of its own, and with the layer code inlined there ``run_plan``
took ~4 s to compile (2 s of it the parfor lowering); with a body of one call ~1.8 s.

Why one entry point: Numba compiles each compiled function that calls another by linking the
callee's code into its own and optimising the whole again, so every wrapper level (a serial and
a parallel form per layer kind, a plan runner per form, a batch runner) paid for the tile code
once more.  One entry point, calling the kernels by address (``table.py``), took the engine's
cold compile from 36 to 15 s.
``global_mean`` is the pool on its own (after ``run``, for endpoints), in NumPy with the bytes
of ``run_plan``'s compiled pool (slow twin: ``reference.global_mean``).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange, types

from . import simd, sync
from .depthwise import depthwise_rows
from .gemm import LANES, _gemm_tasks, _run, pointwise_tiles
from .jit import kernel
from .rows import (INPUT, KIND_DEPTHWISE, KIND_INPUT, KIND_POINTWISE, OP_B, OP_B_LEN, OP_DST, OP_IN_C, OP_IN_H,
                   OP_IN_W, OP_KIND, OP_OUT_C, OP_OUT_H, OP_OUT_W, OP_PAD_LEFT, OP_PAD_TOP, OP_RES, OP_SRC, OP_TAPS,
                   OP_TAPS_LEN, OP_W, OP_W_LEN)
from .stem import _stem_tasks, stem_tasks
from .table import address, by_address


@kernel()
def input_rows(op, r0, r1, x, out, n_img):
    """Output rows r0..r1-1 (over the batch) of the input row of a plan (``KIND_INPUT``):
    images in [0, 1], x flat [N, H, W, C], to x * 2 - 1 (``reference.hub_input``) inside the
    stem's zero padding, out flat [N, out_h, out_w, C].  The stem then reads every patch in
    place, none of them reaching outside."""
    height, width, chans, pad_top, pad_left = op[OP_IN_H], op[OP_IN_W], op[OP_IN_C], op[OP_PAD_TOP], op[OP_PAD_LEFT]
    out_h, out_w = op[OP_OUT_H], op[OP_OUT_W]
    zero = np.float32(0.0)
    line = width * chans
    out_line = out_w * chans
    left = pad_left * chans
    for r in range(r0, r1):
        n = r // out_h
        oy = r % out_h
        iy = oy - pad_top
        o_at = (n * out_h + oy) * out_line
        if iy < 0 or iy >= height:
            for i in range(out_line):
                out[o_at + i] = zero
            continue
        at = (n * height + iy) * line
        for i in range(left):
            out[o_at + i] = zero
        vector_end = line - line % LANES
        for i in range(0, vector_end, LANES):
            simd.store(out, o_at + left + i, simd.twice_minus_one(simd.load(x, at + i)))
        for i in range(vector_end, line):
            out[o_at + left + i] = x[at + i] * np.float32(2.0) - np.float32(1.0)
        for i in range(left + line, out_line):
            out[o_at + i] = zero


# The kernels called by address (``table.py``), each with its one signature: the layer kernels
# (by ``row_tasks``), ``row_tasks`` (by ``run_plan`` and ``shared_pass``), ``shared_pass`` (by
# ``run_plan``'s ``prange``) and the pool.
_F32, _I64, _INT = types.float32[::1], types.int64[::1], types.int64
POINTWISE = (_I64, _INT, _INT, _F32, _F32, _F32, _F32, _F32, _INT)
DEPTHWISE = (_I64, _INT, _INT, _F32, _F32, _F32, _F32, _INT)
STEM = (_I64, _INT, _INT, _F32, _I64, _F32, _F32, _F32, _INT)
INPUT_ROWS = (_I64, _INT, _INT, _F32, _F32, _INT)
ROW_TASKS = (_I64, _INT, _INT, _F32, types.float32[:, ::1], _F32, _F32, _I64, _INT, _I64)
POOL_TASKS = (_F32, _INT, _INT, _INT, _INT, types.float32[:, ::1])
SHARED_PASS = (_F32, _INT, _INT, types.float32[:, ::1], types.int64[:, ::1], _F32, _F32, _I64, types.float32[:, ::1],
               types.boolean, _I64, _I64, _INT, _INT)
CHUNK_PASS = (_F32, _INT, types.float32[:, ::1], types.int64[:, ::1], _F32, _F32, _I64, types.float32[:, ::1],
              types.boolean, _I64, _I64, _INT)
_call_pointwise = by_address("pointwise_tiles", POINTWISE)
_call_depthwise = by_address("depthwise_rows", DEPTHWISE)
_call_stem = by_address("stem_tasks", STEM)
_call_input = by_address("input_rows", INPUT_ROWS)
_call_rows = by_address("row_tasks", ROW_TASKS)
_call_shared = by_address("shared_pass", SHARED_PASS)
_call_pool = by_address("pool_tasks", POOL_TASKS)
_call_chunks = by_address("chunk_pass", CHUNK_PASS)


# In the order of ``kernel_table``.
LAYER_KERNELS = {"pointwise_tiles": (pointwise_tiles, POINTWISE), "depthwise_rows": (depthwise_rows, DEPTHWISE),
                 "stem_tasks": (stem_tasks, STEM), "input_rows": (input_rows, INPUT_ROWS)}


@functools.cache
def kernel_table() -> np.ndarray:
    """The addresses of the kernels for ``run_plan``'s ``table`` argument, in the order
    pointwise, depthwise, stem, input (``LAYER_KERNELS``), then ``row_tasks`` (which calls the
    first four), ``shared_pass``, ``pool_tasks`` and ``chunk_pass``; compiled or loaded from the
    cache on first use."""
    return np.array([address(*LAYER_KERNELS[name]) for name in LAYER_KERNELS]
                    + [address(row_tasks, ROW_TASKS), address(shared_pass, SHARED_PASS),
                       address(pool_tasks, POOL_TASKS), address(chunk_pass, CHUNK_PASS)], np.int64)


def compile_layer_kernels(names) -> None:
    """Compile the named layer kernels (``LAYER_KERNELS``), or load them from the cache, on
    their own: ``mobilenet-np warmup``'s second process compiles one while the first compiles
    the others (each is compiled on its own, ``table.py``)."""
    for name in names:
        address(*LAYER_KERNELS[name])


@kernel(inline=True)
def _operand(x, buffers, at):
    return x if at == INPUT else buffers[at]


@kernel(inline=True)
def _tasks(op, n_img):
    """How many tasks a row's kernel splits into: 6x16 tiles (1x1), output rows (depthwise and
    the input row), output rows x PANEL-channel panels (stem)."""
    kind = op[OP_KIND]
    if kind == KIND_POINTWISE:
        return _gemm_tasks(n_img * op[OP_IN_H] * op[OP_IN_W], op[OP_OUT_C])
    if kind == KIND_DEPTHWISE or kind == KIND_INPUT:
        return n_img * op[OP_OUT_H]
    return _stem_tasks(op, n_img)


@kernel()
def row_tasks(op, t0, t1, x, buffers, weights, biases, taps, n_img, table):
    """Run tasks t0..t1-1 of one plan row over a pass of ``n_img`` images (``_tasks`` counts
    them), by the row's kernel in ``table`` (``kernel_table``)."""
    src = _operand(x, buffers, op[OP_SRC])
    dst = buffers[op[OP_DST]]
    w = weights[op[OP_W]:op[OP_W] + op[OP_W_LEN]]
    b = biases[op[OP_B]:op[OP_B] + op[OP_B_LEN]]
    kind = op[OP_KIND]
    if kind == KIND_POINTWISE:
        _call_pointwise(table[0], (op, t0, t1, src, w, b, _operand(x, buffers, op[OP_RES]), dst, n_img))
    elif kind == KIND_DEPTHWISE:
        _call_depthwise(table[1], (op, t0, t1, src, w, b, dst, n_img))
    elif kind == KIND_INPUT:
        _call_input(table[3], (op, t0, t1, src, dst, n_img))
    else:
        _call_stem(table[2], (op, t0, t1, src, taps[op[OP_TAPS]:op[OP_TAPS] + op[OP_TAPS_LEN]], w, b, dst, n_img))


# Shared passes: each step (a plan row, or the pool) has one cache line of counters per part q:
# [0] tasks of q's run taken, [1] tasks finished by thread q.  Each thread counts on its own
# line, which stays in its core's cache unless another thread comes to take from its run.
LINE = 8        # int64s per 64-byte cache line
GRAINS = 4      # a part's run is taken in about this many grabs


@kernel(inline=True)
def counters_size_of(plan_rows, n_img, per_pass, parts):
    """The length of the int64 ``counters`` array ``run_plan`` needs (``counters_size``)."""
    passes = (n_img + per_pass - 1) // per_pass
    return passes * (plan_rows + 1) * parts * LINE


counters_size = counters_size_of.py_func


@kernel(inline=True)
def take_tasks(counters, base, part, parts, tasks, k):
    """The next range of a step's tasks that thread ``part`` takes, looking from run ``k`` on
    (0 for the step's first take, then the ``k`` returned): (k, t0, t1), or k = ``parts`` when
    none is left.  Run q's counter is at ``base`` + q * LINE.  The thread's own run (k = 0)
    is taken a grain at a time; another's only while the counter shows tasks left (look before
    taking: a failed take still adds to the counter)."""
    while k < parts:
        q = (part + k) % parts
        lo, hi = _run(tasks, q, parts)
        grain = max(1, (hi - lo) // GRAINS)
        taken = base + q * LINE
        if k == 0 or lo + sync.load(counters, taken) < hi:
            t0 = lo + sync.add(counters, taken, grain)
            if t0 < hi:
                return k, t0, min(t0 + grain, hi)
        k += 1
    return k, tasks - tasks, tasks - tasks


@kernel()
def shared_pass(x, n_img, per_pass, buffers, plan, weights, biases, taps, pooled, pool, table, counters, part,
                parts):
    """Thread ``part`` of ``parts`` in ``run_plan``'s one parallel region: every step (each row
    of the plan, then the pool if asked, per pass of ``per_pass`` images) has its tasks cut into
    ``parts`` contiguous runs, as the static split of a ``prange`` would.  The thread takes its
    own run a few tasks at a time, then what is left of the others' (a thread that falls
    behind, descheduled by a busy neighbour, say, loses tasks to the others rather than holding
    them up), counts what it finished, and waits until all of the step's tasks are finished
    before the next step reads them.  A task is taken once, by one thread, so the results are
    those of one thread running every task in turn, however many threads turn up (one thread
    alone takes them all)."""
    first = plan[0]
    in_size = first[OP_IN_H] * first[OP_IN_W] * first[OP_IN_C]
    rows = plan.shape[0]
    last = plan[rows - 1]
    pixels, chans = last[OP_OUT_H] * last[OP_OUT_W], last[OP_OUT_C]
    steps = rows + 1 if pool else rows
    at_step = 0
    for at in range(0, n_img, per_pass):
        count = min(per_pass, n_img - at)
        xs = x if count == n_img else x[at * in_size:(at + count) * in_size]
        for i in range(steps):
            op = plan[min(i, rows - 1)]
            tasks = _tasks(op, count) if i < rows else _pool_tasks(count, chans)
            base = at_step * parts * LINE
            at_step += 1
            finished = 0
            k, t0, t1 = take_tasks(counters, base, part, parts, tasks, 0)
            while k < parts:
                if i < rows:
                    _call_rows(table[4], (op, t0, t1, xs, buffers, weights, biases, taps, count, table))
                else:
                    _call_pool(table[6], (buffers[last[OP_DST]], t0, t1, pixels, chans, pooled[at:at + count]))
                finished += t1 - t0
                k, t0, t1 = take_tasks(counters, base, part, parts, tasks, k)
            sync.add(counters, base + part * LINE + 1, finished)
            sync.wait_for(counters, base + 1, parts, LINE, tasks)


# Whole chunks: counters[0] counts the chunks taken, counters[1] holds how many there are, and
# counters[LINE + c] is the first image of chunk c (counters[LINE + chunks] = n_img).
CHUNKS_AT = LINE


def chunk_counters_size(n_img: int) -> int:
    """The length of the int64 ``counters`` array ``run_plan`` needs with ``whole`` chunks."""
    return CHUNKS_AT + n_img + 1


@kernel(inline=True)
def _chunk_starts(counters, n_img, per_pass, parts):
    """Cut the batch into chunks of at most ``per_pass`` images, shrinking towards the end of
    the batch (to 1/(2 x parts) of what is left), so that the threads finish together even when
    one runs slower than the others; write them to ``counters`` (``CHUNKS_AT``)."""
    at = n_img - n_img
    chunks = at
    while at < n_img:
        counters[CHUNKS_AT + chunks] = at
        at += max(1, min(per_pass, (n_img - at) // (2 * parts)))
        chunks += 1
    counters[CHUNKS_AT + chunks] = n_img
    counters[0] = 0
    counters[1] = chunks


@kernel(inline=True)
def _passes(x, start, stop, per_pass, buffers, plan, weights, biases, taps, pooled, pool, table):
    """Images start..stop-1 on the calling thread, ``per_pass`` at a time, every layer in turn
    (then, if ``pool``, the pass's last output averaged into its rows of ``pooled``)."""
    first = plan[0]
    in_size = first[OP_IN_H] * first[OP_IN_W] * first[OP_IN_C]
    last = plan[plan.shape[0] - 1]
    zero = per_pass - per_pass          # int64, as ``row_tasks`` takes it (a literal 0 is typed apart)
    for at in range(start, stop, per_pass):
        count = min(per_pass, stop - at)
        xs = x[at * in_size:(at + count) * in_size]
        for i in range(plan.shape[0]):
            op = plan[i]
            _call_rows(table[4], (op, zero, _tasks(op, count), xs, buffers, weights, biases, taps, count, table))
        if pool:
            _call_pool(table[6], (buffers[last[OP_DST]], zero, _pool_tasks(count, last[OP_OUT_C]),
                                  last[OP_OUT_H] * last[OP_OUT_W], last[OP_OUT_C], pooled[at:at + count]))


@kernel()
def chunk_pass(x, per_pass, buffers, plan, weights, biases, taps, pooled, pool, table, counters, part):
    """Thread ``part`` in ``run_plan``'s parallel region when the images are shared out whole:
    it takes the next chunk (``counters``, ``_chunk_starts``) and runs it alone, layer after
    layer, on its own three rows of ``buffers`` (3 x part on), until no chunk is left.  No thread
    waits for another before the region's end; a thread that starts late, or runs slowly beside a
    busy neighbour, takes fewer chunks; one thread alone takes them all.  Each image's result does
    not depend on its chunk.  (Waiting at the end spinning, then asleep, for a descheduled
    thread to be moved onto the waiting one's core, measured no better with a busy loop on one
    core: 0.77-1.13x the time by model, 2026-12-02; the engine takes the Python pool then.)"""
    mine = buffers[3 * part:3 * part + 3]
    chunks = counters[1]
    while True:
        c = sync.add(counters, 0, 1)
        if c >= chunks:
            break
        _passes(x, counters[CHUNKS_AT + c], counters[CHUNKS_AT + c + 1], per_pass, mine, plan, weights, biases, taps,
                pooled, pool, table)


@kernel(parallel=True)
def run_plan(x, n_img, per_pass, buffers, plan, weights, biases, taps, parts, pooled, pool, table, counters, whole):
    """Run the layers of ``plan`` on a batch of ``n_img`` images, x flat [N, H, W, C], in
    passes of ``per_pass`` images: layer outputs go to rows of ``buffers`` (each pass
    overwrites the last), weights/biases/taps are slices of one flat array each.  One compiled
    call for the whole batch: no interpreter work between layers.  ``parts`` > 1: one parallel
    region of ``parts`` threads (give the thread count: an argument because a kernel that calls
    ``numba.get_num_threads`` cannot be cached), which either share out every layer's tasks
    (``shared_pass``, with ``counters`` of ``counters_size`` int64s) or, if ``whole``, take the
    images a chunk at a time (``chunk_pass``, with 3 x ``parts`` rows of ``buffers`` and
    ``chunk_counters_size`` counters).  ``pool``: each pass's last output averaged into its
    rows of ``pooled`` [N, C].  ``table``: the kernels (``kernel_table()``)."""
    if parts > 1:
        if whole:
            _chunk_starts(counters, n_img, per_pass, parts)
        else:
            for i in range(counters_size_of(plan.shape[0], n_img, per_pass, parts)):
                counters[i] = 0
        for part in prange(parts):      # the index is unsigned in the prange's body
            if whole:
                _call_chunks(table[7], (x, per_pass, buffers, plan, weights, biases, taps, pooled, pool, table,
                                        counters, np.int64(part)))
            else:
                _call_shared(table[5], (x, n_img, per_pass, buffers, plan, weights, biases, taps, pooled, pool,
                                        table, counters, np.int64(part), parts))
        return
    _passes(x, parts - parts, n_img, per_pass, buffers, plan, weights, biases, taps, pooled, pool, table)


# --- the pool -------------------------------------------------------------------------------

POOL_CHANNELS = 128    # channels per task of the pool (so that two threads share one image's)


@kernel(inline=True)
def _pool_tasks(n_img, chans):
    return n_img * ((chans + POOL_CHANNELS - 1) // POOL_CHANNELS)


@kernel()
def pool_tasks(xf, t0, t1, pixels, chans, out):
    """Tasks t0..t1-1 of the mean over the pixels of each image: xf flat [N, pixels, C] ->
    out [N, C].  Task t is one image's block of POOL_CHANNELS channels (image t // blocks,
    ``_pool_tasks`` counts them); each channel's float32 sum runs over the pixels in row-major
    order.  (Called by address, ``table.py``: compiled once for the one-thread loop and the
    shared passes.)"""
    blocks = (chans + POOL_CHANNELS - 1) // POOL_CHANNELS
    count = np.float32(pixels)
    for t in range(t0, t1):
        n = t // blocks
        c0 = (t % blocks) * POOL_CHANNELS
        c1 = min(chans, c0 + POOL_CHANNELS)
        acc = out[n]
        for c in range(c0, c1):
            acc[c] = 0.0
        for p in range(n * pixels, (n + 1) * pixels):
            for c in range(c0, c1):
                acc[c] += xf[p * chans + c]
        for c in range(c0, c1):
            acc[c] /= count      # divide, as TF's mean does, rather than multiply by 1/count


def global_mean(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mean over H and W: x [N,H,W,C] -> out [N,C], in NumPy, with the bytes of ``run_plan``'s
    compiled pool (``pool_tasks``): float32 sums from +0.0 over the pixels in row-major order (one
    elementwise add per pixel), then a division by float32(H * W).  (Compiled, this loop cost
    ~0.9 s of the cold compile; NumPy takes ~50 us for a 7x7 image.)"""
    n_img, height, width, chans = x.shape
    out = np.empty((n_img, chans), np.float32) if out is None else out
    acc = np.zeros((n_img, chans), np.float32)
    for pixel in np.asarray(x, np.float32).reshape(n_img, height * width, chans).transpose(1, 0, 2):
        acc += pixel
    np.divide(acc, np.float32(height * width), out=out)
    return out
