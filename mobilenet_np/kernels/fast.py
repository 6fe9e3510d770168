"""The fast kernels: Numba-compiled convolutions with BatchNorm folded in and the epilogue fused.

Each convolution writes ``act(conv(x, w) + bias [+ residual])`` straight into a caller-owned
output buffer, so the forward pass makes one pass over memory per layer and allocates nothing.
``bias`` is the folded BatchNorm offset (``beta - mean * scale``; see
``reference.fold_batch_norm``).  Inputs must be C-contiguous float32.

The loops are written so that the innermost loop runs over output channels with unit stride:
LLVM turns it into AVX2/FMA vector code without any reassociation of sums.  Every kernel has a
slow twin in ``reference.py`` and is tested against it (tests/test_kernels.py).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import kernel

_POINTWISE_ROWS = 4      # pixels per micro-tile: each weight row loaded serves 4 FMAs


@kernel(parallel=True)
def conv2d(x, w, bias, stride, pad_top, pad_left, relu6, out):
    """Full k x k convolution (the stem): x [N,H,W,Ci], w [k,k,Ci,Co] -> out [N,Ho,Wo,Co]."""
    n_img, height, width, c_in = x.shape
    _, out_h, out_w, c_out = out.shape
    k = w.shape[0]
    for row in prange(n_img * out_h):
        n = row // out_h
        oy = row % out_h
        for ox in range(out_w):
            acc = out[n, oy, ox]
            for c in range(c_out):
                acc[c] = bias[c]
            for dy in range(k):
                iy = oy * stride + dy - pad_top
                if iy < 0 or iy >= height:
                    continue          # zero padding contributes nothing
                for dx in range(k):
                    ix = ox * stride + dx - pad_left
                    if ix < 0 or ix >= width:
                        continue
                    for ci in range(c_in):
                        v = x[n, iy, ix, ci]
                        for c in range(c_out):
                            acc[c] += v * w[dy, dx, ci, c]
            if relu6:
                for c in range(c_out):
                    acc[c] = min(max(acc[c], 0.0), 6.0)


@kernel(parallel=True)
def depthwise_conv2d(x, w, bias, stride, pad_top, pad_left, relu6, out):
    """Depthwise k x k convolution: x [N,H,W,C], w [k,k,C] (multiplier squeezed) -> out [N,Ho,Wo,C]."""
    n_img, height, width, chans = x.shape
    _, out_h, out_w, _ = out.shape
    k = w.shape[0]
    for row in prange(n_img * out_h):
        n = row // out_h
        oy = row % out_h
        for ox in range(out_w):
            acc = out[n, oy, ox]
            for c in range(chans):
                acc[c] = bias[c]
            for dy in range(k):
                iy = oy * stride + dy - pad_top
                if iy < 0 or iy >= height:
                    continue
                for dx in range(k):
                    ix = ox * stride + dx - pad_left
                    if ix < 0 or ix >= width:
                        continue
                    src = x[n, iy, ix]
                    tap = w[dy, dx]
                    for c in range(chans):
                        acc[c] += src[c] * tap[c]
            if relu6:
                for c in range(chans):
                    acc[c] = min(max(acc[c], 0.0), 6.0)


@kernel(parallel=True)
def pointwise_conv2d(x, w, bias, relu6, residual, add_residual, out):
    """1x1 convolution on flattened pixels: x [P,Ci] @ w [Ci,Co] + bias (+ residual) -> out [P,Co].

    Pixels are taken ``_POINTWISE_ROWS`` at a time so that each weight row, once loaded, feeds
    several accumulator rows; the accumulators are the output rows themselves (in L1).
    """
    pixels, c_in = x.shape
    c_out = w.shape[1]
    tiles = (pixels + _POINTWISE_ROWS - 1) // _POINTWISE_ROWS
    for t in prange(tiles):
        p0 = t * _POINTWISE_ROWS
        if p0 + _POINTWISE_ROWS <= pixels:
            o0 = out[p0]
            o1 = out[p0 + 1]
            o2 = out[p0 + 2]
            o3 = out[p0 + 3]
            for c in range(c_out):
                o0[c] = bias[c]
                o1[c] = bias[c]
                o2[c] = bias[c]
                o3[c] = bias[c]
            for k in range(c_in):
                a0 = x[p0, k]
                a1 = x[p0 + 1, k]
                a2 = x[p0 + 2, k]
                a3 = x[p0 + 3, k]
                wk = w[k]
                for c in range(c_out):
                    wv = wk[c]
                    o0[c] += a0 * wv
                    o1[c] += a1 * wv
                    o2[c] += a2 * wv
                    o3[c] += a3 * wv
        else:
            for p in range(p0, pixels):
                o = out[p]
                for c in range(c_out):
                    o[c] = bias[c]
                for k in range(c_in):
                    a = x[p, k]
                    wk = w[k]
                    for c in range(c_out):
                        o[c] += a * wk[c]
        for p in range(p0, min(p0 + _POINTWISE_ROWS, pixels)):
            o = out[p]
            if add_residual:
                r = residual[p]
                for c in range(c_out):
                    o[c] += r[c]
            if relu6:
                for c in range(c_out):
                    o[c] = min(max(o[c], 0.0), 6.0)


@kernel(parallel=True)
def global_mean(x, out):
    """Mean over H and W: x [N,H,W,C] -> out [N,C]; float32 sums in row-major pixel order."""
    n_img, height, width, chans = x.shape
    count = np.float32(height * width)
    for n in prange(n_img):
        acc = out[n]
        for c in range(chans):
            acc[c] = 0.0
        for y in range(height):
            for xx in range(width):
                src = x[n, y, xx]
                for c in range(chans):
                    acc[c] += src[c]
        for c in range(chans):
            acc[c] /= count      # divide, as TF's mean does, rather than multiply by 1/count
