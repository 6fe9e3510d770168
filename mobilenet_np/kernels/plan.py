"""The whole network in one compiled call: the plan runner, the input row and the pool.

A plan (rows built by ``rows.plan_row``; ``forward/engine.py`` builds them from the layer list)
has one row per layer.  ``run_plan`` walks the rows and hands each to its layer kernel
(``gemm.py``, ``depthwise.py``, ``stem.py``), with its operands sliced out of three rotating
activation buffers and one flat array each of weights, biases and stem tap offsets.  Row 0 of
a plan (``KIND_INPUT``) maps the images to x * 2 - 1 inside the stem's zero padding.

``run_plan`` splits every layer over Numba's threads; ``run_plan_serial`` runs it on the
calling thread without the parallel runtime; ``run_batch_serial`` runs a whole batch, a few
images per pass, pooling included, on the calling thread.  ``global_mean`` is the pool (slow
twin: ``reference.global_mean``).
"""

from __future__ import annotations

import numpy as np

from . import simd
from .depthwise import depthwise_parallel, depthwise_serial
from .gemm import LANES, pointwise_parallel, pointwise_serial
from .jit import kernel
from .rows import (INPUT, KIND_DEPTHWISE, KIND_INPUT, KIND_POINTWISE, OP_B, OP_B_LEN, OP_DST, OP_IN_C, OP_IN_H,
                   OP_IN_W, OP_KIND, OP_OUT_C, OP_OUT_H, OP_OUT_W, OP_PAD_LEFT, OP_PAD_TOP, OP_RES, OP_SRC, OP_TAPS,
                   OP_TAPS_LEN, OP_W, OP_W_LEN)
from .stem import stem_parallel, stem_serial


@kernel(inline=True)
def _hub_input_padded(op, x, out, n_img):
    """The input row of a plan (``KIND_INPUT``): images in [0, 1], x flat [N, H, W, C], to
    x * 2 - 1 (``reference.hub_input``) inside the stem's zero padding, out flat [N, out_h,
    out_w, C].  The stem then reads every patch in place, none of them reaching outside."""
    height, width, chans, pad_top, pad_left = op[OP_IN_H], op[OP_IN_W], op[OP_IN_C], op[OP_PAD_TOP], op[OP_PAD_LEFT]
    out_h, out_w = op[OP_OUT_H], op[OP_OUT_W]
    zero = np.float32(0.0)
    line = width * chans
    out_line = out_w * chans
    left = pad_left * chans
    for n in range(n_img):
        for oy in range(out_h):
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


@kernel(inline=True)
def _operand(x, buffers, at):
    return x if at == INPUT else buffers[at]


@kernel(inline=True)
def _layer(op, x, buffers, weights, biases, taps, n_img, parts, pointwise, depthwise, stem):
    """One plan row over a whole pass of ``n_img`` images.  The layer kernels are arguments,
    so that the parallel and the serial runners each compile only their own (compiling both
    doubled a cold start)."""
    src = _operand(x, buffers, op[OP_SRC])
    dst = buffers[op[OP_DST]]
    w = weights[op[OP_W]:op[OP_W] + op[OP_W_LEN]]
    b = biases[op[OP_B]:op[OP_B] + op[OP_B_LEN]]
    kind = op[OP_KIND]
    if kind == KIND_POINTWISE:
        pointwise(op, src, w, b, _operand(x, buffers, op[OP_RES]), dst, n_img, parts)
    elif kind == KIND_INPUT:
        _hub_input_padded(op, src, dst, n_img)
    elif kind == KIND_DEPTHWISE:
        depthwise(op, src, w, b, dst, n_img, parts)
    else:
        stem(op, src, taps[op[OP_TAPS]:op[OP_TAPS] + op[OP_TAPS_LEN]], w, b, dst, n_img, parts)


@kernel(inline=True)
def _run_serial(x, buffers, plan, weights, biases, taps, n_img):
    """Every plan row on the calling thread, with the serial kernels."""
    parts = n_img - n_img + 1     # unused by the serial kernels; not a literal (see ``gemm._all``)
    for i in range(plan.shape[0]):
        _layer(plan[i], x, buffers, weights, biases, taps, n_img, parts, pointwise_serial, depthwise_serial,
               stem_serial)


@kernel()
def run_plan(x, buffers, plan, weights, biases, taps, n_img, parts):
    """Run the layers of ``plan`` for a pass of ``n_img`` images: layer outputs go to rows of
    ``buffers``, weights/biases/taps are slices of one flat array each.  One compiled call for
    the whole network: no interpreter work between layers.  Each layer is split into ``parts``
    (the thread count) for Numba's threads."""
    for i in range(plan.shape[0]):
        _layer(plan[i], x, buffers, weights, biases, taps, n_img, parts, pointwise_parallel, depthwise_parallel,
               stem_parallel)


@kernel()
def run_plan_serial(x, buffers, plan, weights, biases, taps, n_img, parts):
    """``run_plan`` on the calling thread alone, without the parallel runtime (``parts``
    unused)."""
    _run_serial(x, buffers, plan, weights, biases, taps, n_img)


@kernel()
def run_batch_serial(x, n_img, per_pass, buffers, plan, weights, biases, taps, pooled):
    """The pooled features of a batch (x flat [N, H, W, 3] -> pooled [N, C]) on the calling
    thread: passes of ``per_pass`` images through ``run_plan_serial``'s layers, each pass's
    last output averaged into its rows of ``pooled``.  The whole batch in one compiled call."""
    last = plan[plan.shape[0] - 1]
    in_size = plan[0, OP_IN_H] * plan[0, OP_IN_W] * plan[0, OP_IN_C]     # row 0 reads the images
    pixels = last[OP_OUT_H] * last[OP_OUT_W]
    chans = last[OP_OUT_C]
    for at in range(0, n_img, per_pass):
        count = min(per_pass, n_img - at)
        _run_serial(x[at * in_size:(at + count) * in_size], buffers, plan, weights, biases, taps, count)
        _mean(buffers[last[OP_DST]], count, pixels, chans, pooled[at:at + count])


# --- the pool -------------------------------------------------------------------------------

@kernel(inline=True)
def _mean(xf, n_img, pixels, chans, out):
    """Mean over the pixels of each image: xf flat [N, pixels, C] -> out [N, C]; float32 sums
    in row-major pixel order."""
    count = np.float32(pixels)
    for n in range(n_img):
        acc = out[n]
        for c in range(chans):
            acc[c] = 0.0
        for p in range(n * pixels, (n + 1) * pixels):
            for c in range(chans):
                acc[c] += xf[p * chans + c]
        for c in range(chans):
            acc[c] /= count      # divide, as TF's mean does, rather than multiply by 1/count


@kernel()
def global_mean(x, out):
    """Mean over H and W: x [N,H,W,C] -> out [N,C].  (Serial: a few hundred thousand
    additions, less than starting a parallel region costs.)"""
    n_img, height, width, chans = x.shape
    _mean(x.reshape(-1), n_img, height * width, chans, out)
