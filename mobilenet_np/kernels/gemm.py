"""The 1x1 convolutions (about 90 % of the work) as a register-blocked GEMM, and its weight layout.

``pointwise`` computes ``out[p, :] = act(x[p, :] @ W + bias (+ residual[p, :]))`` for every
pixel p, a matrix product [pixels, C_in] x [C_in, C_out] with BatchNorm folded into W and bias
and the epilogue fused.  A tile of pixels x one panel of PANEL output channels (two vectors:
16 channels with AVX2, 32 with AVX-512, ``simd.LANES``) is accumulated in vector registers over
the whole C_in loop (``simd.py``), reading weights packed by ``pack_pointwise`` so that each step
loads one contiguous row: 12 pixels (24 registers, ``_tile12``) with AVX-512's 32 registers,
6 pixels (12 registers, ``_tile6``) with AVX2's 16, over K_BLOCK channels at a time when a
panel's weights would not stay in L1 (``_tile6k``).  ``_tile6`` (over ``simd.fma2`` and
``simd.emit_panel``) also runs the stem (``stem.py``) and the last pixels of a layer;
``_run`` splits a layer's tasks into runs for the threads.

The layer kernel ``pointwise_tiles`` takes its plan row (``rows.py``) for its sizes and flags
and runs a range of tiles on the calling thread; ``plan.run_plan`` hands each thread a run of
them.  ``pointwise_parallel`` does the same split for one layer on its own (``pointwise_conv2d``,
the tests); the engine never calls it.  The slow twin is ``reference.pointwise_conv2d``
(tests/test_kernels.py).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import simd
from .jit import kernel
from .rows import OP_IN_C, OP_IN_H, OP_IN_W, OP_OUT_C, OP_RELU6, OP_RESIDUAL, plan_row

TILE_ROWS = 6        # pixels per GEMM micro-tile
LANES = simd.LANES
PANEL = 2 * LANES    # output channels per micro-tile: two vectors (16 with AVX2, 32 with AVX-512)
# Pixels per 1x1 task: with AVX-512's 32 vector registers a whole task is one 12-pixel tile
# (``_tile12``: 24 sums); AVX2's 16 registers hold one 6-pixel tile's 12.  A layer that would have
# fewer than MIN_TASKS such tasks keeps 6-pixel ones (``_group``), so that two threads still
# get even shares of it (V2 0.5/96's 6x6 projections would have 3 or 6).
GROUP = 12 if LANES == 16 else TILE_ROWS
MIN_TASKS = 16
_DENSE = np.zeros(0, np.int64)     # "no tap table": the 1x1 case of _tile6
# Input channels per step of a K-blocked panel (``_tile6k``): 32 KiB of a panel's weights, which stay in
# the L1 data cache (48 KiB on the machines of 2026-12) while every pixel group meets them.
K_BLOCK = 8192 // PANEL


# --- weight layouts (NumPy, once at load time) ----------------------------------------------

def pack_pointwise(w: np.ndarray) -> np.ndarray:
    """[C_in, C_out] -> panels [ceil(C_out/PANEL), C_in, PANEL] (flattened), zero-padded, so
    that the GEMM reads each step's PANEL weights from one contiguous row."""
    c_in, c_out = w.shape
    panels = -(-c_out // PANEL)
    padded = np.zeros((c_in, panels * PANEL), np.float32)
    padded[:, :c_out] = w
    return np.ascontiguousarray(padded.reshape(c_in, panels, PANEL).transpose(1, 0, 2)).reshape(-1)


def pad_bias(bias: np.ndarray) -> np.ndarray:
    """Bias zero-padded to whole panels (the GEMM loads it PANEL at a time)."""
    out = np.zeros(-(-bias.shape[0] // PANEL) * PANEL, np.float32)
    out[:bias.shape[0]] = bias
    return out


# --- splitting a layer's tasks over threads -------------------------------------------------

@kernel(inline=True)
def _run(tasks, part, parts):
    """Tasks of run ``part`` of ``parts``: contiguous, as equal as can be (a static prange's split)."""
    return tasks * part // parts, tasks * (part + 1) // parts


# --- the GEMM micro-kernel -----------------------------------------------------------------

@kernel(inline=True)
def _tile6(x, x_at, row_step, taps, c_in, w, w_at, b0, b1, out, o_at, c_out, columns, relu6, residual,
           add_residual):
    """Six pixels x one PANEL-column panel (weights at w_at), summed over c_in steps.

    Pixel r's k-th input is x[x_at + r*row_step + k] for a 1x1 conv (``taps`` empty: the
    pixels' channel vectors are consecutive rows), or x[x_at + r*row_step + taps[k]] for the
    stem, where ``taps`` lists the offsets of the 3x3xC_in patch in the unpadded input."""
    dense = taps.shape[0] == 0
    a00 = a10 = a20 = a30 = a40 = a50 = b0
    a01 = a11 = a21 = a31 = a41 = a51 = b1
    for k in range(c_in):
        w0 = simd.load(w, w_at + k * PANEL)
        w1 = simd.load(w, w_at + k * PANEL + LANES)
        at = x_at + (k if dense else taps[k])
        a00, a01 = simd.fma2(simd.splat_at(x, at), w0, w1, a00, a01)
        a10, a11 = simd.fma2(simd.splat_at(x, at + row_step), w0, w1, a10, a11)
        a20, a21 = simd.fma2(simd.splat_at(x, at + 2 * row_step), w0, w1, a20, a21)
        a30, a31 = simd.fma2(simd.splat_at(x, at + 3 * row_step), w0, w1, a30, a31)
        a40, a41 = simd.fma2(simd.splat_at(x, at + 4 * row_step), w0, w1, a40, a41)
        a50, a51 = simd.fma2(simd.splat_at(x, at + 5 * row_step), w0, w1, a50, a51)
    simd.emit_panel(out, o_at, a00, a01, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + c_out, a10, a11, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 2 * c_out, a20, a21, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 3 * c_out, a30, a31, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 4 * c_out, a40, a41, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 5 * c_out, a50, a51, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _tile6k(x, x_at, c_in, k0, k1, w, w_at, b0, b1, out, o_at, c_out, relu6, residual, add_residual):
    """``_tile6`` over input channels k0..k1-1 of a whole panel (PANEL channels): the sums start
    from the bias when k0 is 0, else from the partial sums the previous block stored in ``out``,
    and are finished (activation, residual) only after the last block (k1 = c_in), else stored
    as they are.  A float32 sum stored and loaded back is the same value, so the FMAs run in the
    same order on the same values as in one pass: the same bytes as ``_tile6``."""
    if k0 == 0:
        a00 = a10 = a20 = a30 = a40 = a50 = b0
        a01 = a11 = a21 = a31 = a41 = a51 = b1
    else:
        a00, a01 = simd.load(out, o_at), simd.load(out, o_at + LANES)
        a10, a11 = simd.load(out, o_at + c_out), simd.load(out, o_at + c_out + LANES)
        a20, a21 = simd.load(out, o_at + 2 * c_out), simd.load(out, o_at + 2 * c_out + LANES)
        a30, a31 = simd.load(out, o_at + 3 * c_out), simd.load(out, o_at + 3 * c_out + LANES)
        a40, a41 = simd.load(out, o_at + 4 * c_out), simd.load(out, o_at + 4 * c_out + LANES)
        a50, a51 = simd.load(out, o_at + 5 * c_out), simd.load(out, o_at + 5 * c_out + LANES)
    for k in range(k0, k1):
        w0 = simd.load(w, w_at + k * PANEL)
        w1 = simd.load(w, w_at + k * PANEL + LANES)
        at = x_at + k
        a00, a01 = simd.fma2(simd.splat_at(x, at), w0, w1, a00, a01)
        a10, a11 = simd.fma2(simd.splat_at(x, at + c_in), w0, w1, a10, a11)
        a20, a21 = simd.fma2(simd.splat_at(x, at + 2 * c_in), w0, w1, a20, a21)
        a30, a31 = simd.fma2(simd.splat_at(x, at + 3 * c_in), w0, w1, a30, a31)
        a40, a41 = simd.fma2(simd.splat_at(x, at + 4 * c_in), w0, w1, a40, a41)
        a50, a51 = simd.fma2(simd.splat_at(x, at + 5 * c_in), w0, w1, a50, a51)
    done = k1 == c_in
    relu6, add_residual = relu6 and done, add_residual and done
    simd.emit_panel(out, o_at, a00, a01, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + c_out, a10, a11, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 2 * c_out, a20, a21, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 3 * c_out, a30, a31, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 4 * c_out, a40, a41, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 5 * c_out, a50, a51, PANEL, relu6, residual, add_residual)


@kernel(inline=True)
def _tile12(x, x_at, c_in, w, w_at, b0, b1, out, o_at, c_out, columns, relu6, residual, add_residual):
    """Twelve pixels x one panel, for AVX-512's 32 vector registers: 24 sums.  Each step's two
    weight vectors meet twelve inputs, not six: 24 FMAs to 14 loads, where ``_tile6``'s step is
    12 FMAs to 8 loads and its loop's own instructions (address arithmetic, the counter) leave
    the FMA units idle about a third of the time.  The same FMAs per output in the same order,
    so the same values as ``_tile6``.  In-process A/B with the stem's change of the same commit,
    batch 1, 1 thread: V1 0.5/160 0.93-0.95x the time, V2 0.5/96 0.96x; 10x10x256 -> 256 from
    75-77 to 84-91 GMAC/s."""
    a00 = a10 = a20 = a30 = a40 = a50 = a60 = a70 = a80 = a90 = aa0 = ab0 = b0
    a01 = a11 = a21 = a31 = a41 = a51 = a61 = a71 = a81 = a91 = aa1 = ab1 = b1
    for k in range(c_in):
        w0 = simd.load(w, w_at + k * PANEL)
        w1 = simd.load(w, w_at + k * PANEL + LANES)
        at = x_at + k
        a00, a01 = simd.fma2(simd.splat_at(x, at), w0, w1, a00, a01)
        a10, a11 = simd.fma2(simd.splat_at(x, at + c_in), w0, w1, a10, a11)
        a20, a21 = simd.fma2(simd.splat_at(x, at + 2 * c_in), w0, w1, a20, a21)
        a30, a31 = simd.fma2(simd.splat_at(x, at + 3 * c_in), w0, w1, a30, a31)
        a40, a41 = simd.fma2(simd.splat_at(x, at + 4 * c_in), w0, w1, a40, a41)
        a50, a51 = simd.fma2(simd.splat_at(x, at + 5 * c_in), w0, w1, a50, a51)
        a60, a61 = simd.fma2(simd.splat_at(x, at + 6 * c_in), w0, w1, a60, a61)
        a70, a71 = simd.fma2(simd.splat_at(x, at + 7 * c_in), w0, w1, a70, a71)
        a80, a81 = simd.fma2(simd.splat_at(x, at + 8 * c_in), w0, w1, a80, a81)
        a90, a91 = simd.fma2(simd.splat_at(x, at + 9 * c_in), w0, w1, a90, a91)
        aa0, aa1 = simd.fma2(simd.splat_at(x, at + 10 * c_in), w0, w1, aa0, aa1)
        ab0, ab1 = simd.fma2(simd.splat_at(x, at + 11 * c_in), w0, w1, ab0, ab1)
    simd.emit_panel(out, o_at, a00, a01, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + c_out, a10, a11, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 2 * c_out, a20, a21, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 3 * c_out, a30, a31, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 4 * c_out, a40, a41, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 5 * c_out, a50, a51, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 6 * c_out, a60, a61, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 7 * c_out, a70, a71, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 8 * c_out, a80, a81, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 9 * c_out, a90, a91, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 10 * c_out, aa0, aa1, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 11 * c_out, ab0, ab1, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _tile6h(x, x_at, row_step, taps, c_in, w, w_at, b0, out, o_at, c_out, columns, relu6, residual, add_residual):
    """``_tile6`` for a last panel whose channels fit one vector (C_out - c0 <= LANES: C_out 8 or
    16 with AVX-512's 32-channel panels, or 48 and 80): six sums, not twelve of which six are never
    stored.  The same FMAs per output, so the same values.  V2 0.5/96 (projections to 8 and 16
    channels, expansions to 48) took 0.94-0.96x the time at batch 1 and 0.93x at batch 32, V1
    0.5/160 (no such layer) 0.99-1.01x (in-process A/B, 2026-12-02).  Not in the stem: its 27-step
    sums with six chains ran V1 0.5/160's 80 x 80 x 16 stem slower than twelve half-used ones
    (the stem has twelve whole ones, ``stem._tile12h``)."""
    dense = taps.shape[0] == 0
    a0 = a1 = a2 = a3 = a4 = a5 = b0
    for k in range(c_in):
        w0 = simd.load(w, w_at + k * PANEL)
        at = x_at + (k if dense else taps[k])
        a0 = simd.fma(simd.splat_at(x, at), w0, a0)
        a1 = simd.fma(simd.splat_at(x, at + row_step), w0, a1)
        a2 = simd.fma(simd.splat_at(x, at + 2 * row_step), w0, a2)
        a3 = simd.fma(simd.splat_at(x, at + 3 * row_step), w0, a3)
        a4 = simd.fma(simd.splat_at(x, at + 4 * row_step), w0, a4)
        a5 = simd.fma(simd.splat_at(x, at + 5 * row_step), w0, a5)
    simd.emit_panel(out, o_at, a0, a0, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + c_out, a1, a1, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 2 * c_out, a2, a2, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 3 * c_out, a3, a3, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 4 * c_out, a4, a4, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 5 * c_out, a5, a5, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _tile1(x, x_at, c_in, w, w_at, b0, b1, out, o_at, columns, relu6, residual, add_residual):
    """One pixel x one panel: the rows left over when the pixel count is not a multiple of 6."""
    a0 = b0
    a1 = b1
    for k in range(c_in):
        a0, a1 = simd.fma2(simd.splat_at(x, x_at + k), simd.load(w, w_at + k * PANEL),
                       simd.load(w, w_at + k * PANEL + LANES), a0, a1)
    simd.emit_panel(out, o_at, a0, a1, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _tile3w(x, x_at, c_in, w, w_at, bias, c0, out, o_at, c_out, relu6, residual, add_residual):
    """Three pixels x two panels (2 x PANEL columns from c0, the first panel full, weights at w_at and
    w_at + c_in*PANEL): the same twelve accumulators and FMAs per step as ``_tile6``, for the last
    1-3 pixels of a group, where a 6-pixel tile would redo 3-5 pixels (a 3x3 layer at batch 1
    has 9 pixels: 2 tiles of 6 rows, or 1.5 of this one, per PANEL columns)."""
    a00 = a10 = a20 = simd.load(bias, c0)
    a01 = a11 = a21 = simd.load(bias, c0 + LANES)
    a02 = a12 = a22 = simd.load(bias, c0 + PANEL)
    a03 = a13 = a23 = simd.load(bias, c0 + PANEL + LANES)
    next_panel = c_in * PANEL
    for k in range(c_in):
        at = w_at + k * PANEL
        w0 = simd.load(w, at)
        w1 = simd.load(w, at + LANES)
        w2 = simd.load(w, at + next_panel)
        w3 = simd.load(w, at + next_panel + LANES)
        v = simd.splat_at(x, x_at + k)
        a00, a01 = simd.fma2(v, w0, w1, a00, a01)
        a02, a03 = simd.fma2(v, w2, w3, a02, a03)
        v = simd.splat_at(x, x_at + c_in + k)
        a10, a11 = simd.fma2(v, w0, w1, a10, a11)
        a12, a13 = simd.fma2(v, w2, w3, a12, a13)
        v = simd.splat_at(x, x_at + 2 * c_in + k)
        a20, a21 = simd.fma2(v, w0, w1, a20, a21)
        a22, a23 = simd.fma2(v, w2, w3, a22, a23)
    columns = min(PANEL, c_out - c0 - PANEL)
    simd.emit_panel(out, o_at, a00, a01, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + PANEL, a02, a03, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + c_out, a10, a11, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + c_out + PANEL, a12, a13, columns, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 2 * c_out, a20, a21, PANEL, relu6, residual, add_residual)
    simd.emit_panel(out, o_at + 2 * c_out + PANEL, a22, a23, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _group(pixels, c_out):
    """Pixels per task of a 1x1 layer: GROUP, or TILE_ROWS where GROUP gives under MIN_TASKS tasks."""
    return GROUP if -(-pixels // GROUP) * -(-c_out // PANEL) >= MIN_TASKS else TILE_ROWS


@kernel(inline=True)
def _gemm_tasks(pixels, c_out):
    return -(-pixels // _group(pixels, c_out)) * -(-c_out // PANEL)


@kernel(inline=True)
def _pixels(op, n_img):
    return n_img * op[OP_IN_H] * op[OP_IN_W]


@kernel()
def pointwise_tiles(op, t0, t1, x, w, bias, residual, out, n_img):
    """Tiles t0..t1-1 of the 1x1 layer ``op`` over ``n_img`` images, on the calling thread.

    Visit order: consecutive tiles (one thread's run) keep the smaller operand in cache.  With
    more output channels than pixels the weights are the bigger stream, so all pixels meet one
    weight panel (PANEL columns x c_in, in L1) before the next panel.  The (group, panel) pair is
    stepped, not divided out of t: two integer divisions per tile cost ~20 % at C_in = 16.
    Task (g, j) is pixel group g (``_group``: GROUP pixels, or 6 in a small layer) x weight
    panel j (PANEL channels): one ``_tile12`` with AVX-512 (two ``_tile6h`` for a panel that
    fits one vector), one ``_tile6`` with AVX2 or for 6 pixels.

    The last group, when the pixel count is not a multiple of the group, runs 6-pixel tiles while
    they fit.  With 1-3 pixels left after them, panels run in pairs through ``_tile3w`` over
    the last 3 pixels (task j even does panels j and j+1, task j+1 nothing); otherwise, and for
    an unpaired last panel, a last 6-pixel tile ends at the last pixel.  Either way a few pixels
    are recomputed to the same values, rather than run a latency-bound pixel at a time.
    (The tile's code is written out in the loop, not a helper inlined there: Numba's inlining
    copied its IR at some cost to the compile.)"""
    pixels = _pixels(op, n_img)
    c_in = op[OP_IN_C]
    c_out = op[OP_OUT_C]
    relu6 = op[OP_RELU6] != 0
    add_residual = op[OP_RESIDUAL] != 0
    panel_major = c_out > pixels
    group = _group(pixels, c_out)
    inner = -(-pixels // group) if panel_major else -(-c_out // PANEL)
    # With AVX2, panels of more than K_BLOCK input channels (panel-major order only), whole
    # groups and whole panels: the run's tiles of one panel go K_BLOCK channels at a time
    # (``_tile6k``), so that the slice of weights they share stays in L1; the loop below skips
    # them.  AVX-512's 12-pixel tiles run in one pass: their step reads the weights half as often
    # per FMA, and the blocked form measured the same.
    blocked = GROUP == TILE_ROWS and panel_major and c_in > K_BLOCK
    whole_groups = pixels // group
    whole_panels = c_out // PANEL
    t = t0
    while blocked and t < t1:
        j = t // inner
        g1 = min(t1 - j * inner, whole_groups)
        if j < whole_panels:
            c0 = j * PANEL
            b0 = simd.load(bias, c0)
            b1 = simd.load(bias, c0 + LANES)
            for k0 in range(0, c_in, K_BLOCK):
                k1 = min(c_in, k0 + K_BLOCK)
                for g in range(t - j * inner, g1):
                    p0 = g * group
                    _tile6k(x, p0 * c_in, c_in, k0, k1, w, j * c_in * PANEL, b0, b1, out, p0 * c_out + c0, c_out,
                            relu6, residual, add_residual)
        t = (j + 1) * inner
    outer_at = t0 // inner
    inner_at = t0 % inner
    for _ in range(t0, t1):
        g = inner_at if panel_major else outer_at
        j = outer_at if panel_major else inner_at
        inner_at += 1
        if inner_at == inner:
            inner_at = 0
            outer_at += 1
        if blocked and g < whole_groups and j < whole_panels:      # done above
            continue
        p0 = g * group
        p1 = min(p0 + group, pixels)
        c0 = j * PANEL
        columns = min(PANEL, c_out - c0)
        w_at = j * c_in * PANEL
        b0 = simd.load(bias, c0)
        b1 = simd.load(bias, c0 + LANES)
        if group > TILE_ROWS and p1 - p0 == group and columns > LANES:
            _tile12(x, p0 * c_in, c_in, w, w_at, b0, b1, out, p0 * c_out + c0, c_out, columns, relu6, residual,
                    add_residual)
            continue
        while p0 < p1:
            rest = p1 - p0
            if rest < TILE_ROWS and pixels >= TILE_ROWS and rest <= 3 and (j % 2 == 1 or c0 + PANEL < c_out):
                if j % 2 == 0:      # panels j and j+1 over the last 3 pixels
                    q = pixels - 3
                    _tile3w(x, q * c_in, c_in, w, w_at, bias, c0, out, q * c_out + c0, c_out, relu6, residual,
                            add_residual)
                break
            if rest < TILE_ROWS and pixels < TILE_ROWS:
                for p in range(p0, pixels):
                    _tile1(x, p * c_in, c_in, w, w_at, b0, b1, out, p * c_out + c0, columns,
                           relu6, residual, add_residual)
                break
            q = min(p0, pixels - TILE_ROWS)     # a last tile ends at the last pixel
            if columns <= LANES:
                _tile6h(x, q * c_in, c_in, _DENSE, c_in, w, w_at, b0, out, q * c_out + c0, c_out, columns,
                        relu6, residual, add_residual)
            else:
                _tile6(x, q * c_in, c_in, _DENSE, c_in, w, w_at, b0, b1, out, q * c_out + c0, c_out, columns,
                       relu6, residual, add_residual)
            p0 += TILE_ROWS


@kernel(parallel=True)
def pointwise_parallel(op, x, w, bias, residual, out, n_img, parts):
    """The 1x1 layer ``op`` on its own: x flat [pixels, C_in] -> out flat [pixels, C_out]
    (``residual`` likewise), with ``w``/``bias`` from ``pack_pointwise``/``pad_bias``.  The tasks
    (``_group`` pixels x PANEL channels) are cut into ``parts`` contiguous runs for Numba's
    threads, as ``plan.run_plan`` cuts them."""
    tasks = _gemm_tasks(_pixels(op, n_img), op[OP_OUT_C])
    for part in prange(parts):
        t0, t1 = _run(tasks, part, parts)
        pointwise_tiles(op, t0, t1, x, w, bias, residual, out, n_img)


def pointwise_conv2d(x, w_packed, bias_padded, relu6, residual, add_residual, out, serial=False):
    """1x1 convolution: x [P, C_in] -> out [P, C_out] (2-D views of NHWC buffers).  ``serial``:
    the one-thread form of the kernel (as ``stem.conv2d`` and ``depthwise.depthwise_conv2d``)."""
    pixels, c_in = x.shape
    op = plan_row("pointwise", in_hw=(pixels, 1), in_c=c_in, out_hw=(pixels, 1), out_c=out.shape[1], relu6=relu6,
                  residual=add_residual)
    tasks = _gemm_tasks.py_func(pixels, out.shape[1])
    x, residual, out = x.reshape(-1), residual.reshape(-1), out.reshape(-1)
    if serial:
        pointwise_tiles(op, 0, tasks, x, w_packed, bias_padded, residual, out, 1)
    else:
        pointwise_parallel(op, x, w_packed, bias_padded, residual, out, 1, numba.get_num_threads())
