"""Depthwise 3x3 convolutions: each channel filtered by its own 3x3 kernel, LANES channels per vector.

Each output row is cut into tiles of 8 adjacent pixels (stride 1) or 4, and for each tile the
channels are walked LANES at a time (``depthwise_rows``; ``simd.LANES`` is 16 with AVX-512, else 8).
Every input column is loaded once and feeds all the pixels it reaches (3 of them at stride 1),
and the tile's sums are independent, so the multiply-adds do not wait on one another.  Tap rows
in the padding are skipped; columns in the padding read as zeros.  Each pixel sums its bias,
then its taps in (dy, dx) order.  When C is not a multiple of LANES, the last channel group
runs as a whole vector too and stores only its valid lanes (``simd.store_act_n``): its loads
read up to LANES - 1 floats past the group's last channel (the next pixel's, or the slack the
engine leaves after its buffers and weights), which only feed lanes that are never stored.

As the other layer kernels, it takes its plan row (``rows.py``); ``depthwise_rows`` runs a range
of output rows on the calling thread (``plan.run_plan`` hands each thread a run),
``depthwise_parallel`` splits the layer on its own.  The slow twin is ``reference.depthwise_conv2d``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import simd
from .gemm import LANES, _run
from .jit import kernel
from .rows import OP_IN_C, OP_IN_H, OP_IN_W, OP_OUT_H, OP_OUT_W, OP_PAD_LEFT, OP_PAD_TOP, OP_RELU6, OP_STRIDE, plan_row


@kernel(inline=True)
def _tile4(xf, at, ix0, width, chans, line, stride, w, c, dy0, dy1, b, checked):
    """Four adjacent output pixels of one row, channels c..c+7: each sums its bias, then its taps
    in (dy, dx) order over the tap rows dy0..dy1-1 that lie inside the image.  Each input column
    is loaded once and used by every pixel it reaches (3 at stride 1), and the four sums are
    independent, so the FMAs do not wait on each other."""
    a0 = a1 = a2 = a3 = b
    for dy in range(dy0, dy1):
        r = at + dy * line
        wa, wb, wc = simd.load3(w, dy * 3 * chans + c, chans)
        x = simd.load_inside(xf, r, ix0, width, checked)
        a0 = simd.fma(x, wa, a0)
        if stride == 1:
            x = simd.load_inside(xf, r + chans, ix0 + 1, width, checked)
            a0 = simd.fma(x, wb, a0)
            a1 = simd.fma(x, wa, a1)
            a0, a1, a2 = simd.feed3(simd.load_inside(xf, r + 2 * chans, ix0 + 2, width, checked), wa, wb, wc, a0, a1, a2)
            a1, a2, a3 = simd.feed3(simd.load_inside(xf, r + 3 * chans, ix0 + 3, width, checked), wa, wb, wc, a1, a2, a3)
            x = simd.load_inside(xf, r + 4 * chans, ix0 + 4, width, checked)
            a2 = simd.fma(x, wc, a2)
            a3 = simd.fma(x, wb, a3)
            a3 = simd.fma(simd.load_inside(xf, r + 5 * chans, ix0 + 5, width, checked), wc, a3)
        else:
            # Stride 2: an even column is the last tap of one pixel and the first of the next;
            # an odd column the middle tap of one pixel.
            a0 = simd.fma(simd.load_inside(xf, r + chans, ix0 + 1, width, checked), wb, a0)
            x = simd.load_inside(xf, r + 2 * chans, ix0 + 2, width, checked)
            a0 = simd.fma(x, wc, a0)
            a1 = simd.fma(x, wa, a1)
            a1 = simd.fma(simd.load_inside(xf, r + 3 * chans, ix0 + 3, width, checked), wb, a1)
            x = simd.load_inside(xf, r + 4 * chans, ix0 + 4, width, checked)
            a1 = simd.fma(x, wc, a1)
            a2 = simd.fma(x, wa, a2)
            a2 = simd.fma(simd.load_inside(xf, r + 5 * chans, ix0 + 5, width, checked), wb, a2)
            x = simd.load_inside(xf, r + 6 * chans, ix0 + 6, width, checked)
            a2 = simd.fma(x, wc, a2)
            a3 = simd.fma(x, wa, a3)
            a3 = simd.fma(simd.load_inside(xf, r + 7 * chans, ix0 + 7, width, checked), wb, a3)
            a3 = simd.fma(simd.load_inside(xf, r + 8 * chans, ix0 + 8, width, checked), wc, a3)
    return a0, a1, a2, a3


@kernel(inline=True)
def _tile8(xf, at, ix0, width, chans, line, w, c, dy0, dy1, b, checked):
    """Eight adjacent output pixels at stride 1, as ``_tile4``: 10 input columns per tap row
    serve 24 FMAs, and 8 independent sums keep both FMA units busy (with 4, each sum's chain
    of 9 dependent FMAs left them waiting; 8-pixel tiles measured ~14 % faster over the
    stride-1 layers of both networks, ~1.5x at 16 channels)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = b
    for dy in range(dy0, dy1):
        r = at + dy * line
        wa, wb, wc = simd.load3(w, dy * 3 * chans + c, chans)
        a0 = simd.fma(simd.load_inside(xf, r, ix0, width, checked), wa, a0)
        x = simd.load_inside(xf, r + chans, ix0 + 1, width, checked)
        a0 = simd.fma(x, wb, a0)
        a1 = simd.fma(x, wa, a1)
        a0, a1, a2 = simd.feed3(simd.load_inside(xf, r + 2 * chans, ix0 + 2, width, checked), wa, wb, wc, a0, a1, a2)
        a1, a2, a3 = simd.feed3(simd.load_inside(xf, r + 3 * chans, ix0 + 3, width, checked), wa, wb, wc, a1, a2, a3)
        a2, a3, a4 = simd.feed3(simd.load_inside(xf, r + 4 * chans, ix0 + 4, width, checked), wa, wb, wc, a2, a3, a4)
        a3, a4, a5 = simd.feed3(simd.load_inside(xf, r + 5 * chans, ix0 + 5, width, checked), wa, wb, wc, a3, a4, a5)
        a4, a5, a6 = simd.feed3(simd.load_inside(xf, r + 6 * chans, ix0 + 6, width, checked), wa, wb, wc, a4, a5, a6)
        a5, a6, a7 = simd.feed3(simd.load_inside(xf, r + 7 * chans, ix0 + 7, width, checked), wa, wb, wc, a5, a6, a7)
        x = simd.load_inside(xf, r + 8 * chans, ix0 + 8, width, checked)
        a6 = simd.fma(x, wc, a6)
        a7 = simd.fma(x, wb, a7)
        a7 = simd.fma(simd.load_inside(xf, r + 9 * chans, ix0 + 9, width, checked), wc, a7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@kernel(inline=True)
def _pixel(xf, at, ix0, width, chans, line, w, c, dy0, dy1, b):
    """One output pixel, channels c..c+7, taps in the padding skipped (same order as _tile4)."""
    acc = b
    for dy in range(dy0, dy1):
        for dx in range(max(0, -ix0), min(3, width - ix0)):
            acc = simd.fma(simd.load(xf, at + dy * line + dx * chans), simd.load(w, (dy * 3 + dx) * chans + c),
                           acc)
    return acc


@kernel()
def depthwise_rows(op, r0, r1, xf, w, bias, of, n_img):
    """Output rows r0..r1-1 (over the whole batch) of the depthwise row ``op``, on the calling
    thread; each row with all its channels.  The row is cut into
    tiles of 8 pixels at stride 1, then of 4, and for each tile the channels are walked 8 at a
    time: the tile's input (3 rows x 6 to 10 columns x C) is read front to back, which the caches
    and prefetchers follow well even at C = 512 (walking a row per channel group instead strides
    by C*4 bytes and thrashes L1 sets).  Tap rows in the padding are skipped; columns in the
    padding read as zero.  A last single pixel takes ``_pixel``; the last C mod LANES channels a
    whole vector whose extra lanes are not stored (the module's docstring)."""
    height, width, chans = op[OP_IN_H], op[OP_IN_W], op[OP_IN_C]
    stride, pad_top, pad_left, relu6 = op[OP_STRIDE], op[OP_PAD_TOP], op[OP_PAD_LEFT], op[OP_RELU6] != 0
    out_h, out_w = op[OP_OUT_H], op[OP_OUT_W]
    line = width * chans
    for row in range(r0, r1):  # (one function, not a row helper inlined here: ~1 s less compile)
        n = row // out_h
        oy = row % out_h
        iy0 = oy * stride - pad_top
        dy0 = max(0, -iy0)
        dy1 = min(3, height - iy0)
        ox = 0
        while stride == 1 and ox + 8 <= out_w:
            ix0 = ox - pad_left
            at0 = ((n * height + iy0) * width + ix0) * chans
            o_at0 = (row * out_w + ox) * chans
            inside = ix0 >= 0 and ix0 + 9 < width
            for c in range(0, chans, LANES):
                lanes = min(LANES, chans - c)
                b = simd.load(bias, c)
                a0, a1, a2, a3, a4, a5, a6, a7 = _tile8(xf, at0 + c, ix0, width, chans, line, w, c, dy0, dy1, b,
                                                        not inside)
                o_at = o_at0 + c
                simd.store_act_n(of, o_at, a0, relu6, lanes)
                simd.store_act_n(of, o_at + chans, a1, relu6, lanes)
                simd.store_act_n(of, o_at + 2 * chans, a2, relu6, lanes)
                simd.store_act_n(of, o_at + 3 * chans, a3, relu6, lanes)
                simd.store_act_n(of, o_at + 4 * chans, a4, relu6, lanes)
                simd.store_act_n(of, o_at + 5 * chans, a5, relu6, lanes)
                simd.store_act_n(of, o_at + 6 * chans, a6, relu6, lanes)
                simd.store_act_n(of, o_at + 7 * chans, a7, relu6, lanes)
            ox += 8
        while ox < out_w:
            keep = min(4, out_w - ox)
            ix0 = ox * stride - pad_left
            # Offsets of taps may point outside the array for taps that are skipped or zeroed.
            at0 = ((n * height + iy0) * width + ix0) * chans
            o_at0 = (row * out_w + ox) * chans
            if keep == 1:
                for c in range(0, chans, LANES):
                    simd.store_act_n(of, o_at0 + c, _pixel(xf, at0 + c, ix0, width, chans, line, w, c, dy0, dy1,
                                                   simd.load(bias, c)), relu6, min(LANES, chans - c))
                break
            inside = keep == 4 and ix0 >= 0 and ix0 + 3 * stride + 2 < width
            for c in range(0, chans, LANES):
                lanes = min(LANES, chans - c)
                b = simd.load(bias, c)
                a0, a1, a2, a3 = _tile4(xf, at0 + c, ix0, width, chans, line, stride, w, c, dy0, dy1, b, not inside)
                o_at = o_at0 + c
                simd.store_act_n(of, o_at, a0, relu6, lanes)
                simd.store_act_n(of, o_at + chans, a1, relu6, lanes)
                if keep > 2:
                    simd.store_act_n(of, o_at + 2 * chans, a2, relu6, lanes)
                if keep > 3:
                    simd.store_act_n(of, o_at + 3 * chans, a3, relu6, lanes)
            ox += 4


@kernel(parallel=True)
def depthwise_parallel(op, xf, w, bias, of, n_img, parts):
    """Depthwise 3x3: x flat [N,H,W,C], w flat [(dy*3 + dx)*C + c], bias [C] -> out flat [N,Ho,Wo,C].
    Output rows are the tasks (``depthwise_rows``), in ``parts`` contiguous runs as in
    ``gemm.pointwise_parallel`` (the layer on its own; the engine splits it in ``plan.run_plan``)."""
    for part in prange(parts):
        r0, r1 = _run(n_img * op[OP_OUT_H], part, parts)
        depthwise_rows(op, r0, r1, xf, w, bias, of, n_img)


def depthwise_conv2d(x, w, bias, stride, pad_top, pad_left, relu6, out, serial=False):
    """Depthwise 3x3 convolution with weights [3, 3, C] (the multiplier-1 axis squeezed)."""
    if w.shape[0] != 3 or w.shape[1] != 3:
        raise ValueError(f"depthwise kernels must be 3x3, got {w.shape[:2]}")
    n_img, height, width, chans = x.shape
    if chans % LANES:       # the last channel group reads past the arrays' ends: copies with slack
        x, w, bias = (np.concatenate([np.ravel(a).astype(np.float32), np.zeros(LANES, np.float32)])
                      for a in (x, np.ascontiguousarray(w), bias))
        w = w[:-LANES].reshape(3, 3, chans)   # (a view: the slack stays behind it)
        x = x[:-LANES].reshape(n_img, height, width, chans)
    op = plan_row("depthwise", k=3, stride=stride, in_hw=(height, width), in_c=chans, out_hw=out.shape[1:3],
                  out_c=chans, pad_top=pad_top, pad_left=pad_left, relu6=relu6)
    w = np.ascontiguousarray(w).reshape(-1)
    if serial:
        depthwise_rows(op, 0, n_img * out.shape[1], x.reshape(-1), w, bias, out.reshape(-1), n_img)
    else:
        depthwise_parallel(op, x.reshape(-1), w, bias, out.reshape(-1), n_img, numba.get_num_threads())
