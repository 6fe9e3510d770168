"""The stem: the network's one full 3x3 convolution (3 input channels), on the GEMM micro-kernel.

Each output row is cut into 6-pixel tiles that run ``gemm._tile6`` (12-pixel ones, ``_tile12h``,
where the output channels fit one vector and the stride is 2 over 3 channels) on the input
patches in place, through a table of the 27 offsets of a 3x3x3 patch (``stem_taps``): no im2col
copy.  In the plan the images arrive
already inside the stem's zero padding (the input row of ``plan.py``), so no patch reaches
outside; pixels whose patch does touch the padding (the stem called on its own, as the tests
do) take ``_patch1``, which skips the taps outside the image.

As the other layer kernels, it takes its plan row (``rows.py``); ``stem_tasks`` runs a range of
its tasks on the calling thread (``plan.run_plan`` hands each thread a run), ``stem_parallel``
splits the layer on its own.  The slow twin is ``reference.conv2d``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import simd
from .gemm import LANES, PANEL, TILE_ROWS, _run, _tile6
from .jit import kernel
from .rows import (OP_IN_C, OP_IN_H, OP_IN_W, OP_K, OP_OUT_C, OP_OUT_H, OP_OUT_W, OP_PAD_LEFT, OP_PAD_TOP,
                   OP_RELU6, OP_STRIDE, plan_row)


def stem_taps(k: int, width: int, c_in: int) -> np.ndarray:
    """Offsets of a k x k x C_in patch's elements from its top-left corner in an NHWC image of
    the given width, in HWIO order (dy, dx, c): the rows of W.reshape(-1, C_out) they meet."""
    dy, dx, c = np.meshgrid(np.arange(k), np.arange(k), np.arange(c_in), indexing="ij")
    return ((dy * width + dx) * c_in + c).reshape(-1).astype(np.int64)


@kernel(inline=True)
def _patch1(x, n, iy0, ix0, height, width, c_in, k, w, w_at, b0, b1, out, o_at, columns, relu6):
    """One output pixel of the stem whose patch reaches into the zero padding: taps outside the
    image are skipped (adding zero), the rest summed in the same (dy, dx, c) order."""
    a0 = b0
    a1 = b1
    for dy in range(k):
        iy = iy0 + dy
        for dx in range(k):
            ix = ix0 + dx
            if 0 <= iy < height and 0 <= ix < width:
                at = ((n * height + iy) * width + ix) * c_in
                for c in range(c_in):
                    step = w_at + ((dy * k + dx) * c_in + c) * PANEL
                    a0, a1 = simd.fma2(simd.splat_at(x, at + c), simd.load(w, step), simd.load(w, step + LANES), a0, a1)
    simd.emit_panel(out, o_at, a0, a1, columns, relu6, out, False)


WIDE_TILE = 12      # pixels per tile when the stem's channels fit one vector (_tile12h)
WIDE_STEP = 6       # ... and the stride is 2 over 3 channels: the inputs of its pixels lie 6 floats apart


@kernel(inline=True)
def _tile12h(x, x_at, row_step, taps, steps, w, w_at, b0, out, o_at, c_out, columns, relu6):
    """Twelve pixels x one vector of channels, for a stem whose C_out fits one vector (16 at
    depth multiplier 0.5 or 0.35, 8 at 0.25, with AVX-512's 16 lanes).  ``gemm._tile6`` would
    compute a 32-channel panel of which half is never stored, and ``gemm._tile6h``'s six sums are
    six dependent FMA chains, too few to fill the FMA units over 27 short steps; twelve are
    enough, all of them stored.  The same FMAs in the same order per output, so the same values.
    Called with ``row_step`` the constant WIDE_STEP (stride 2 over 3 channels: every MobileNet
    stem), so that each FMA reads its input at one register plus a fixed offset; with a run-time
    step the twelve addresses took twelve registers and spilled (the kernel alone: 38 -> 55
    GMAC/s)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = b0
    for k in range(steps):
        w0 = simd.load(w, w_at + k * PANEL)
        at = x_at + taps[k]
        a0 = simd.fma(simd.splat_at(x, at), w0, a0)
        a1 = simd.fma(simd.splat_at(x, at + row_step), w0, a1)
        a2 = simd.fma(simd.splat_at(x, at + 2 * row_step), w0, a2)
        a3 = simd.fma(simd.splat_at(x, at + 3 * row_step), w0, a3)
        a4 = simd.fma(simd.splat_at(x, at + 4 * row_step), w0, a4)
        a5 = simd.fma(simd.splat_at(x, at + 5 * row_step), w0, a5)
        a6 = simd.fma(simd.splat_at(x, at + 6 * row_step), w0, a6)
        a7 = simd.fma(simd.splat_at(x, at + 7 * row_step), w0, a7)
        a8 = simd.fma(simd.splat_at(x, at + 8 * row_step), w0, a8)
        a9 = simd.fma(simd.splat_at(x, at + 9 * row_step), w0, a9)
        a10 = simd.fma(simd.splat_at(x, at + 10 * row_step), w0, a10)
        a11 = simd.fma(simd.splat_at(x, at + 11 * row_step), w0, a11)
    simd.emit_panel(out, o_at, a0, a0, columns, relu6, out, False)
    simd.emit_panel(out, o_at + c_out, a1, a1, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 2 * c_out, a2, a2, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 3 * c_out, a3, a3, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 4 * c_out, a4, a4, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 5 * c_out, a5, a5, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 6 * c_out, a6, a6, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 7 * c_out, a7, a7, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 8 * c_out, a8, a8, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 9 * c_out, a9, a9, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 10 * c_out, a10, a10, columns, relu6, out, False)
    simd.emit_panel(out, o_at + 11 * c_out, a11, a11, columns, relu6, out, False)


@kernel(inline=True)
def _stem_tasks(op, n_img):
    return n_img * op[OP_OUT_H] * -(-op[OP_OUT_C] // PANEL)


@kernel()
def stem_tasks(op, t0, t1, x, taps, w, bias, out, n_img):
    """Tasks t0..t1-1 of the stem row ``op``, on the calling thread: task t is one output row x
    one PANEL-channel panel.  (The task's code is written out in the loop, not a helper inlined
    there: Numba's inlining copied its IR at some cost to the compile.)"""
    height, width, c_in, k, stride = op[OP_IN_H], op[OP_IN_W], op[OP_IN_C], op[OP_K], op[OP_STRIDE]
    pad_top, pad_left, relu6 = op[OP_PAD_TOP], op[OP_PAD_LEFT], op[OP_RELU6] != 0
    out_h, out_w, c_out = op[OP_OUT_H], op[OP_OUT_W], op[OP_OUT_C]
    panels = -(-c_out // PANEL)
    steps = k * k * c_in
    for t in range(t0, t1):
        row = t // panels
        j = t % panels
        n = row // out_h
        oy = row % out_h
        c0 = j * PANEL
        columns = min(PANEL, c_out - c0)
        w_at = j * steps * PANEL
        b0 = simd.load(bias, c0)
        b1 = simd.load(bias, c0 + LANES)
        iy0 = oy * stride - pad_top
        # Output columns whose whole patch lies inside the image: [inside_lo, inside_hi).  They run
        # in 6-pixel tiles, the last one shifted left to end at inside_hi (the overlap is recomputed
        # to the same values); the pixels whose patch touches the padding take _patch1.
        inside_lo = out_w
        inside_hi = out_w
        if iy0 >= 0 and iy0 + k <= height:
            inside_lo = min(-(-pad_left // stride), out_w)
            inside_hi = max(min((width - k + pad_left) // stride + 1, out_w), inside_lo)
        if inside_hi - inside_lo < TILE_ROWS:
            inside_lo = out_w
            inside_hi = out_w
        wide = columns <= LANES and stride * c_in == WIDE_STEP and inside_hi - inside_lo >= WIDE_TILE
        tile = WIDE_TILE if wide else TILE_ROWS
        for ox0 in range(inside_lo, inside_hi, tile):
            ox0 = min(ox0, inside_hi - tile)
            x_at = ((n * height + iy0) * width + ox0 * stride - pad_left) * c_in
            o_at = (row * out_w + ox0) * c_out + c0
            if tile == WIDE_TILE:
                _tile12h(x, x_at, WIDE_STEP, taps, steps, w, w_at, b0, out, o_at, c_out, columns, relu6)
            else:
                _tile6(x, x_at, stride * c_in, taps, steps, w, w_at, b0, b1, out, o_at, c_out, columns, relu6, out,
                       False)
        for ox in range(out_w):
            if ox < inside_lo or ox >= inside_hi:
                _patch1(x, n, iy0, ox * stride - pad_left, height, width, c_in, k, w, w_at, b0, b1,
                        out, (row * out_w + ox) * c_out + c0, columns, relu6)


@kernel(parallel=True)
def stem_parallel(op, x, taps, w, bias, out, n_img, parts):
    """Full k x k convolution (the stem), x flat [N, H, W, C_in] -> out flat [N, out_h, out_w,
    c_out], ``taps`` from ``stem_taps``: the tasks in ``parts`` contiguous runs, as in
    ``gemm.pointwise_parallel`` (the layer on its own; the engine splits it in ``plan.run_plan``)."""
    tasks = _stem_tasks(op, n_img)
    for part in prange(parts):
        t0, t1 = _run(tasks, part, parts)
        stem_tasks(op, t0, t1, x, taps, w, bias, out, n_img)


def conv2d(x, w_packed, bias_padded, taps, k, stride, pad_top, pad_left, relu6, out, serial=False):
    """Full k x k convolution (the stem); ``taps`` from ``stem_taps(k, W, C_in)``."""
    n_img, height, width, c_in = x.shape
    op = plan_row("conv", k=k, stride=stride, in_hw=(height, width), in_c=c_in, out_hw=out.shape[1:3],
                  out_c=out.shape[3], pad_top=pad_top, pad_left=pad_left, relu6=relu6)
    if serial:
        stem_tasks(op, 0, _stem_tasks.py_func(op, n_img), x.reshape(-1), taps, w_packed, bias_padded, out.reshape(-1),
                   n_img)
    else:
        stem_parallel(op, x.reshape(-1), taps, w_packed, bias_padded, out.reshape(-1), n_img, numba.get_num_threads())
