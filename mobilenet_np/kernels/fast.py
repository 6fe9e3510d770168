"""The fast kernels: Numba-compiled convolutions with BatchNorm folded in and the epilogue fused.

Each convolution writes ``act(conv(x, w) + bias [+ residual])`` straight into a caller-owned
output buffer, so the forward pass makes one pass over memory per layer and allocates nothing.
``bias`` is the folded BatchNorm offset (``beta - mean * scale``; see
``reference.fold_batch_norm``).  All arrays are C-contiguous float32.

* ``pointwise_conv2d``: the 1x1 convolutions (about 90 % of the work) are a matrix product
  [pixels, C_in] x [C_in, C_out].  It runs as a register-blocked GEMM: a tile of 6 pixels x 16
  output channels is accumulated in 12 vector registers over the whole C_in loop (``simd.py``),
  reading weights packed by ``pack_pointwise`` so that each step loads one contiguous row.
* ``depthwise_conv2d``: tiles of 8 (stride 1) or 4 adjacent output pixels x 8 channels, each
  input column loaded once for every pixel it reaches, the sums in registers.
* ``conv2d`` (the stem): the same GEMM micro-kernel, reading each 3x3xC_in patch in place
  through a table of offsets.
* ``global_mean``: the feature vector.

Each layer kernel comes in two forms over the same compiled tile code: a parallel one that
hands each of Numba's threads a contiguous run of tiles, and a ``_serial`` one for a thread
that works alone (one thread, or a worker running a whole chunk of the batch).  ``run_plan``
and ``run_plan_serial`` run a whole network with one or the other; ``run_batch_serial`` runs
a whole batch, chunk after chunk, pooling included, on the calling thread.

Sums run over the input channels (or taps) in order, starting from the bias; only the place
of the bias in the sum differs from TensorFlow's ``conv + bias``, a last-bit effect bounded by
the tests.  Every kernel has a slow twin in ``reference.py`` and is tested against it
(tests/test_kernels.py).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import simd
from .jit import kernel

TILE_ROWS = 6        # pixels per GEMM micro-tile
PANEL = 16           # output channels per micro-tile: two 8-lane vectors
LANES = simd.LANES
_DENSE = np.zeros(0, np.int64)     # "no tap table": the 1x1 case of _tile6


# --- weight layouts (NumPy, once at load time) ----------------------------------------------

def pack_pointwise(w: np.ndarray) -> np.ndarray:
    """[C_in, C_out] -> panels [ceil(C_out/16), C_in, 16] (flattened), zero-padded, so that the
    GEMM reads each step's 16 weights from one contiguous row."""
    c_in, c_out = w.shape
    panels = -(-c_out // PANEL)
    padded = np.zeros((c_in, panels * PANEL), np.float32)
    padded[:, :c_out] = w
    return np.ascontiguousarray(padded.reshape(c_in, panels, PANEL).transpose(1, 0, 2)).reshape(-1)


def pad_bias(bias: np.ndarray) -> np.ndarray:
    """Bias zero-padded to whole panels (the GEMM loads it 16 at a time)."""
    out = np.zeros(-(-bias.shape[0] // PANEL) * PANEL, np.float32)
    out[:bias.shape[0]] = bias
    return out


# --- the GEMM micro-kernel -----------------------------------------------------------------

@kernel(inline=True)
def _emit(out, offset, lo, hi, columns, relu6, residual, add_residual):
    """Finish one pixel's 16 accumulators: + residual, ReLU6, store the valid columns (whole
    8-lane vectors where they fit, so that C_out = 8 or 24 does not fall to a scalar loop)."""
    if columns >= LANES:
        v = simd.add(lo, simd.load(residual, offset)) if add_residual else lo
        simd.store(out, offset, simd.relu6(v) if relu6 else v)
    if columns == PANEL:
        v = simd.add(hi, simd.load(residual, offset + LANES)) if add_residual else hi
        simd.store(out, offset + LANES, simd.relu6(v) if relu6 else v)
    else:
        for c in range(LANES if columns >= LANES else 0, columns):
            s = simd.lane(lo, c) if c < LANES else simd.lane(hi, c - LANES)
            if add_residual:
                s += residual[offset + c]
            if relu6:
                s = min(max(s, np.float32(0.0)), np.float32(6.0))
            out[offset + c] = s


@kernel(inline=True)
def _fma2(v, w0, w1, lo, hi):
    """One input value (splat) times one 16-column weight row, into one pixel's two vectors."""
    return simd.fma(v, w0, lo), simd.fma(v, w1, hi)


@kernel(inline=True)
def _tile6(x, x_at, row_step, taps, c_in, w, w_at, b0, b1, out, o_at, c_out, columns, relu6, residual,
           add_residual):
    """Six pixels x one 16-column panel (weights at w_at), summed over c_in steps.

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
        a00, a01 = _fma2(simd.splat_at(x, at), w0, w1, a00, a01)
        a10, a11 = _fma2(simd.splat_at(x, at + row_step), w0, w1, a10, a11)
        a20, a21 = _fma2(simd.splat_at(x, at + 2 * row_step), w0, w1, a20, a21)
        a30, a31 = _fma2(simd.splat_at(x, at + 3 * row_step), w0, w1, a30, a31)
        a40, a41 = _fma2(simd.splat_at(x, at + 4 * row_step), w0, w1, a40, a41)
        a50, a51 = _fma2(simd.splat_at(x, at + 5 * row_step), w0, w1, a50, a51)
    _emit(out, o_at, a00, a01, columns, relu6, residual, add_residual)
    _emit(out, o_at + c_out, a10, a11, columns, relu6, residual, add_residual)
    _emit(out, o_at + 2 * c_out, a20, a21, columns, relu6, residual, add_residual)
    _emit(out, o_at + 3 * c_out, a30, a31, columns, relu6, residual, add_residual)
    _emit(out, o_at + 4 * c_out, a40, a41, columns, relu6, residual, add_residual)
    _emit(out, o_at + 5 * c_out, a50, a51, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _tile1(x, x_at, c_in, w, w_at, b0, b1, out, o_at, columns, relu6, residual, add_residual):
    """One pixel x one panel: the rows left over when the pixel count is not a multiple of 6."""
    a0 = b0
    a1 = b1
    for k in range(c_in):
        a0, a1 = _fma2(simd.splat_at(x, x_at + k), simd.load(w, w_at + k * PANEL),
                       simd.load(w, w_at + k * PANEL + LANES), a0, a1)
    _emit(out, o_at, a0, a1, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _tile3w(x, x_at, c_in, w, w_at, bias, c0, out, o_at, c_out, relu6, residual, add_residual):
    """Three pixels x two panels (32 columns from c0, the first panel full, weights at w_at and
    w_at + c_in*16): the same twelve accumulators and FMAs per step as ``_tile6``, for the last
    1-3 pixels of a group, where a 6-pixel tile would redo 3-5 pixels (a 3x3 layer at batch 1
    has 9 pixels: 2 tiles of 6 rows, or 1.5 of this one, per 16 columns)."""
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
        a00, a01 = _fma2(v, w0, w1, a00, a01)
        a02, a03 = _fma2(v, w2, w3, a02, a03)
        v = simd.splat_at(x, x_at + c_in + k)
        a10, a11 = _fma2(v, w0, w1, a10, a11)
        a12, a13 = _fma2(v, w2, w3, a12, a13)
        v = simd.splat_at(x, x_at + 2 * c_in + k)
        a20, a21 = _fma2(v, w0, w1, a20, a21)
        a22, a23 = _fma2(v, w2, w3, a22, a23)
    columns = min(PANEL, c_out - c0 - PANEL)
    _emit(out, o_at, a00, a01, PANEL, relu6, residual, add_residual)
    _emit(out, o_at + PANEL, a02, a03, columns, relu6, residual, add_residual)
    _emit(out, o_at + c_out, a10, a11, PANEL, relu6, residual, add_residual)
    _emit(out, o_at + c_out + PANEL, a12, a13, columns, relu6, residual, add_residual)
    _emit(out, o_at + 2 * c_out, a20, a21, PANEL, relu6, residual, add_residual)
    _emit(out, o_at + 2 * c_out + PANEL, a22, a23, columns, relu6, residual, add_residual)


@kernel(inline=True)
def _gemm_task(g, j, x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out):
    """One tile of ``gemm_bias_act``: pixel group g (6 pixels) x weight panel j (16 channels).

    The last group, when the pixel count is not a multiple of 6: with 1-3 pixels left, panels
    run in pairs through ``_tile3w`` over the last 3 pixels (task j even does panels j and
    j+1, task j+1 nothing); otherwise, and for an unpaired last panel, the last 6 pixels run
    whole.  Either way a few pixels are recomputed to the same values, rather than run a
    latency-bound pixel at a time."""
    p0 = g * TILE_ROWS
    c0 = j * PANEL
    columns = min(PANEL, c_out - c0)
    w_at = j * c_in * PANEL
    b0 = simd.load(bias, c0)
    b1 = simd.load(bias, c0 + LANES)
    paired = False
    if p0 + TILE_ROWS > pixels and pixels >= TILE_ROWS:
        paired = pixels % TILE_ROWS <= 3 and (j % 2 == 1 or c0 + PANEL < c_out)
        p0 = pixels - 3 if paired else pixels - TILE_ROWS
    if paired:
        if j % 2 == 0:
            _tile3w(x, p0 * c_in, c_in, w, w_at, bias, c0, out, p0 * c_out + c0, c_out, relu6, residual,
                    add_residual)
    elif p0 + TILE_ROWS <= pixels:
        _tile6(x, p0 * c_in, c_in, _DENSE, c_in, w, w_at, b0, b1, out, p0 * c_out + c0, c_out, columns,
               relu6, residual, add_residual)
    else:
        for p in range(p0, pixels):
            _tile1(x, p * c_in, c_in, w, w_at, b0, b1, out, p * c_out + c0, columns,
                   relu6, residual, add_residual)


@kernel(inline=True)
def _gemm_tasks(pixels, c_out):
    return -(-pixels // TILE_ROWS) * -(-c_out // PANEL)


@kernel(inline=True)
def _run(tasks, part, parts):
    """Tasks of run ``part`` of ``parts``: contiguous, as equal as can be (a static prange's split)."""
    return tasks * part // parts, tasks * (part + 1) // parts


@kernel(inline=True)
def _all(n):
    """The range 0..n as two run-time integers: a literal 0 handed to a kernel would make Numba
    compile a second, identical copy of it for that literal."""
    return n - n, n


@kernel()
def gemm_tiles(t0, t1, x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out):
    """Tiles t0..t1-1 of ``gemm_bias_act``, on the calling thread.

    Visit order: consecutive tiles (one thread's run) keep the smaller operand in cache.  With
    more output channels than pixels the weights are the bigger stream, so all pixels meet one
    weight panel (16 columns x c_in, in L1) before the next panel.  The (group, panel) pair is
    stepped, not divided out of t: two integer divisions per tile cost ~20 % at C_in = 16."""
    panel_major = c_out > pixels
    inner = -(-pixels // TILE_ROWS) if panel_major else -(-c_out // PANEL)
    outer_at = t0 // inner
    inner_at = t0 % inner
    for _ in range(t0, t1):
        g = inner_at if panel_major else outer_at
        j = outer_at if panel_major else inner_at
        _gemm_task(g, j, x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out)
        inner_at += 1
        if inner_at == inner:
            inner_at = 0
            outer_at += 1


@kernel(parallel=True)
def gemm_bias_act(x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out, parts):
    """out[p, :] = act(x[p, :] @ W + bias (+ residual[p, :])) for p < pixels, on flat arrays.

    ``w``/``bias`` come from ``pack_pointwise``/``pad_bias``; ``x`` is [pixels, c_in] and
    ``out``/``residual`` [pixels, c_out], row-major.  Work is split into (6 pixels x 16
    channels) tiles, cut into ``parts`` contiguous runs for Numba's threads (give the thread
    count: as a static ``prange`` over tiles would split them).  The runs call the serial
    ``gemm_tiles``, so that the tile code is compiled once, not twice.  (``parts`` is an
    argument because a kernel that calls ``numba.get_num_threads`` cannot be cached.)"""
    tasks = _gemm_tasks(pixels, c_out)
    for part in prange(parts):
        t0, t1 = _run(tasks, part, parts)
        gemm_tiles(t0, t1, x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out)


@kernel()
def gemm_bias_act_serial(x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out, parts):
    """``gemm_bias_act`` on the calling thread alone (no parallel runtime; ``parts`` unused)."""
    t0, t1 = _all(_gemm_tasks(pixels, c_out))
    gemm_tiles(t0, t1, x, pixels, c_in, w, bias, c_out, relu6, residual, add_residual, out)


def pointwise_conv2d(x, w_packed, bias_padded, relu6, residual, add_residual, out, serial=False):
    """1x1 convolution: x [P, C_in] -> out [P, C_out] (2-D views of NHWC buffers).  ``serial``:
    the one-thread twin of the kernel (as ``conv2d`` and ``depthwise_conv2d``)."""
    pixels, c_in = x.shape
    gemm = gemm_bias_act_serial if serial else gemm_bias_act
    gemm(x.reshape(-1), pixels, c_in, w_packed, bias_padded, out.shape[1], relu6, residual.reshape(-1), add_residual,
         out.reshape(-1), numba.get_num_threads())


# --- the stem: the GEMM over 3x3 patches, read in place -------------------------------------

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
                    a0, a1 = _fma2(simd.splat_at(x, at + c), simd.load(w, step), simd.load(w, step + LANES), a0, a1)
    _emit(out, o_at, a0, a1, columns, relu6, out, False)


@kernel(inline=True)
def _stem_task(t, x, n_img, height, width, c_in, k, stride, pad_top, pad_left, taps, w, bias, relu6,
               out, out_h, out_w, c_out):
    """Task t of ``conv2d_stem``: one output row x one 16-channel panel."""
    panels = -(-c_out // PANEL)
    steps = k * k * c_in
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
    for ox0 in range(inside_lo, inside_hi, TILE_ROWS):
        ox0 = min(ox0, inside_hi - TILE_ROWS)
        x_at = ((n * height + iy0) * width + ox0 * stride - pad_left) * c_in
        _tile6(x, x_at, stride * c_in, taps, steps, w, w_at, b0, b1, out, (row * out_w + ox0) * c_out + c0, c_out,
               columns, relu6, out, False)
    for ox in range(out_w):
        if ox < inside_lo or ox >= inside_hi:
            _patch1(x, n, iy0, ox * stride - pad_left, height, width, c_in, k, w, w_at, b0, b1,
                    out, (row * out_w + ox) * c_out + c0, columns, relu6)


@kernel()
def stem_tasks(t0, t1, x, n_img, height, width, c_in, k, stride, pad_top, pad_left, taps, w, bias, relu6,
               out, out_h, out_w, c_out):
    """Tasks t0..t1-1 of ``conv2d_stem``, on the calling thread."""
    for t in range(t0, t1):
        _stem_task(t, x, n_img, height, width, c_in, k, stride, pad_top, pad_left, taps, w, bias, relu6,
                   out, out_h, out_w, c_out)


@kernel(parallel=True)
def conv2d_stem(x, n_img, height, width, c_in, k, stride, pad_top, pad_left, taps, w, bias, relu6,
                out, out_h, out_w, c_out, parts):
    """Full k x k convolution (the stem), x flat [N, H, W, C_in] -> out flat [N, out_h, out_w,
    c_out].  Each output row is cut into 6-pixel tiles that run the GEMM micro-kernel on the
    patches in place (no im2col copy); pixels whose patch touches the padding take ``_patch1``.
    (row, panel) tasks in ``parts`` contiguous runs, as in ``gemm_bias_act``."""
    tasks = n_img * out_h * -(-c_out // PANEL)
    for part in prange(parts):
        t0, t1 = _run(tasks, part, parts)
        stem_tasks(t0, t1, x, n_img, height, width, c_in, k, stride, pad_top, pad_left, taps, w, bias, relu6,
                   out, out_h, out_w, c_out)


@kernel()
def conv2d_stem_serial(x, n_img, height, width, c_in, k, stride, pad_top, pad_left, taps, w, bias, relu6,
                       out, out_h, out_w, c_out, parts):
    """``conv2d_stem`` on the calling thread alone."""
    t0, t1 = _all(n_img * out_h * -(-c_out // PANEL))
    stem_tasks(t0, t1, x, n_img, height, width, c_in, k, stride, pad_top, pad_left,
               taps, w, bias, relu6, out, out_h, out_w, c_out)


def conv2d(x, w_packed, bias_padded, taps, k, stride, pad_top, pad_left, relu6, out, serial=False):
    """Full k x k convolution (the stem); ``taps`` from ``stem_taps(k, W, C_in)``."""
    stem = conv2d_stem_serial if serial else conv2d_stem
    stem(x.reshape(-1), *x.shape, k, stride, pad_top, pad_left, taps, w_packed, bias_padded, relu6, out.reshape(-1),
         *out.shape[1:], numba.get_num_threads())


# --- depthwise ------------------------------------------------------------------------------

@kernel(inline=True)
def _col(xf, at, ix, width, checked):
    """The 8 channels of one input column, or zeros for a column in the padding (only tiles that
    touch the left or right edge are ``checked``)."""
    if checked and not (0 <= ix < width):
        return simd.zeros()
    return simd.load(xf, at)


@kernel(inline=True)
def _tap_row(w, dy, chans, c):
    """The weights of tap row dy (dx = 0, 1, 2) for channels c..c+7."""
    return (simd.load(w, (dy * 3) * chans + c), simd.load(w, (dy * 3 + 1) * chans + c),
            simd.load(w, (dy * 3 + 2) * chans + c))


@kernel(inline=True)
def _feed3(x, wa, wb, wc, left, mid, right):
    """Stride 1: an input column is the last tap (wc) of the pixel two to its left, the middle
    one (wb) of its left neighbour and the first one (wa) of its own pixel."""
    return simd.fma(x, wc, left), simd.fma(x, wb, mid), simd.fma(x, wa, right)


@kernel(inline=True)
def _tile4(xf, at, ix0, width, chans, line, stride, w, c, dy0, dy1, b, checked):
    """Four adjacent output pixels of one row, channels c..c+7: each sums its bias, then its taps
    in (dy, dx) order over the tap rows dy0..dy1-1 that lie inside the image.  Each input column
    is loaded once and used by every pixel it reaches (3 at stride 1), and the four sums are
    independent, so the FMAs do not wait on each other."""
    a0 = a1 = a2 = a3 = b
    for dy in range(dy0, dy1):
        r = at + dy * line
        wa, wb, wc = _tap_row(w, dy, chans, c)
        x = _col(xf, r, ix0, width, checked)
        a0 = simd.fma(x, wa, a0)
        if stride == 1:
            x = _col(xf, r + chans, ix0 + 1, width, checked)
            a0 = simd.fma(x, wb, a0)
            a1 = simd.fma(x, wa, a1)
            a0, a1, a2 = _feed3(_col(xf, r + 2 * chans, ix0 + 2, width, checked), wa, wb, wc, a0, a1, a2)
            a1, a2, a3 = _feed3(_col(xf, r + 3 * chans, ix0 + 3, width, checked), wa, wb, wc, a1, a2, a3)
            x = _col(xf, r + 4 * chans, ix0 + 4, width, checked)
            a2 = simd.fma(x, wc, a2)
            a3 = simd.fma(x, wb, a3)
            a3 = simd.fma(_col(xf, r + 5 * chans, ix0 + 5, width, checked), wc, a3)
        else:
            # Stride 2: an even column is the last tap of one pixel and the first of the next;
            # an odd column the middle tap of one pixel.
            a0 = simd.fma(_col(xf, r + chans, ix0 + 1, width, checked), wb, a0)
            x = _col(xf, r + 2 * chans, ix0 + 2, width, checked)
            a0 = simd.fma(x, wc, a0)
            a1 = simd.fma(x, wa, a1)
            a1 = simd.fma(_col(xf, r + 3 * chans, ix0 + 3, width, checked), wb, a1)
            x = _col(xf, r + 4 * chans, ix0 + 4, width, checked)
            a1 = simd.fma(x, wc, a1)
            a2 = simd.fma(x, wa, a2)
            a2 = simd.fma(_col(xf, r + 5 * chans, ix0 + 5, width, checked), wb, a2)
            x = _col(xf, r + 6 * chans, ix0 + 6, width, checked)
            a2 = simd.fma(x, wc, a2)
            a3 = simd.fma(x, wa, a3)
            a3 = simd.fma(_col(xf, r + 7 * chans, ix0 + 7, width, checked), wb, a3)
            a3 = simd.fma(_col(xf, r + 8 * chans, ix0 + 8, width, checked), wc, a3)
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
        wa, wb, wc = _tap_row(w, dy, chans, c)
        a0 = simd.fma(_col(xf, r, ix0, width, checked), wa, a0)
        x = _col(xf, r + chans, ix0 + 1, width, checked)
        a0 = simd.fma(x, wb, a0)
        a1 = simd.fma(x, wa, a1)
        a0, a1, a2 = _feed3(_col(xf, r + 2 * chans, ix0 + 2, width, checked), wa, wb, wc, a0, a1, a2)
        a1, a2, a3 = _feed3(_col(xf, r + 3 * chans, ix0 + 3, width, checked), wa, wb, wc, a1, a2, a3)
        a2, a3, a4 = _feed3(_col(xf, r + 4 * chans, ix0 + 4, width, checked), wa, wb, wc, a2, a3, a4)
        a3, a4, a5 = _feed3(_col(xf, r + 5 * chans, ix0 + 5, width, checked), wa, wb, wc, a3, a4, a5)
        a4, a5, a6 = _feed3(_col(xf, r + 6 * chans, ix0 + 6, width, checked), wa, wb, wc, a4, a5, a6)
        a5, a6, a7 = _feed3(_col(xf, r + 7 * chans, ix0 + 7, width, checked), wa, wb, wc, a5, a6, a7)
        x = _col(xf, r + 8 * chans, ix0 + 8, width, checked)
        a6 = simd.fma(x, wc, a6)
        a7 = simd.fma(x, wb, a7)
        a7 = simd.fma(_col(xf, r + 9 * chans, ix0 + 9, width, checked), wc, a7)
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


@kernel(inline=True)
def _store(out, at, v, relu6):
    simd.store(out, at, simd.relu6(v) if relu6 else v)


@kernel(inline=True)
def _dw_row(row, xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of, out_h, out_w):
    """Task ``row`` of ``depthwise3x3``: one output row, all channels.  The row is cut into
    tiles of 8 pixels at stride 1, then of 4, and for each tile the channels are walked 8 at a
    time: the tile's input (3 rows x 6 to 10 columns x C) is read front to back, which the caches
    and prefetchers follow well even at C = 512 (walking a row per channel group instead strides
    by C*4 bytes and thrashes L1 sets).  Tap rows in the padding are skipped; columns in the
    padding read as zero.  A last single pixel takes ``_pixel``; the last C mod 8 channels a
    scalar loop."""
    vector_chans = chans - chans % LANES
    line = width * chans
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
        for c in range(0, vector_chans, LANES):
            b = simd.load(bias, c)
            a0, a1, a2, a3, a4, a5, a6, a7 = _tile8(xf, at0 + c, ix0, width, chans, line, w, c, dy0, dy1, b,
                                                    not inside)
            o_at = o_at0 + c
            _store(of, o_at, a0, relu6)
            _store(of, o_at + chans, a1, relu6)
            _store(of, o_at + 2 * chans, a2, relu6)
            _store(of, o_at + 3 * chans, a3, relu6)
            _store(of, o_at + 4 * chans, a4, relu6)
            _store(of, o_at + 5 * chans, a5, relu6)
            _store(of, o_at + 6 * chans, a6, relu6)
            _store(of, o_at + 7 * chans, a7, relu6)
        ox += 8
    while ox < out_w:
        keep = min(4, out_w - ox)
        ix0 = ox * stride - pad_left
        # Offsets of taps may point outside the array for taps that are skipped or zeroed.
        at0 = ((n * height + iy0) * width + ix0) * chans
        o_at0 = (row * out_w + ox) * chans
        if keep == 1:
            for c in range(0, vector_chans, LANES):
                _store(of, o_at0 + c, _pixel(xf, at0 + c, ix0, width, chans, line, w, c, dy0, dy1,
                                             simd.load(bias, c)), relu6)
            break
        inside = keep == 4 and ix0 >= 0 and ix0 + 3 * stride + 2 < width
        for c in range(0, vector_chans, LANES):
            b = simd.load(bias, c)
            a0, a1, a2, a3 = _tile4(xf, at0 + c, ix0, width, chans, line, stride, w, c, dy0, dy1, b, not inside)
            o_at = o_at0 + c
            _store(of, o_at, a0, relu6)
            _store(of, o_at + chans, a1, relu6)
            if keep > 2:
                _store(of, o_at + 2 * chans, a2, relu6)
            if keep > 3:
                _store(of, o_at + 3 * chans, a3, relu6)
        ox += 4
    for ox in range(out_w):
        ix0 = ox * stride - pad_left
        for c in range(vector_chans, chans):
            s = bias[c]
            for dy in range(dy0, dy1):
                for dx in range(max(0, -ix0), min(3, width - ix0)):
                    s += xf[((n * height + iy0 + dy) * width + ix0 + dx) * chans + c] * w[(dy * 3 + dx) * chans + c]
            if relu6:
                s = min(max(s, np.float32(0.0)), np.float32(6.0))
            of[(row * out_w + ox) * chans + c] = s


@kernel()
def depthwise_rows(r0, r1, xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of, out_h,
                   out_w):
    """Output rows r0..r1-1 (over the whole batch) of ``depthwise3x3``, on the calling thread."""
    for row in range(r0, r1):
        _dw_row(row, xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of, out_h, out_w)


@kernel(parallel=True)
def depthwise3x3(xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of, out_h, out_w,
                 parts):
    """Depthwise 3x3: x flat [N,H,W,C], w flat [(dy*3 + dx)*C + c], bias [C] -> out flat [N,Ho,Wo,C].

    Output rows are the tasks (``_dw_row``), in ``parts`` contiguous runs as in
    ``gemm_bias_act``; each pixel sums bias then its taps in (dy, dx) order, skipping taps in
    the zero padding."""
    for part in prange(parts):
        r0, r1 = _run(n_img * out_h, part, parts)
        depthwise_rows(r0, r1, xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of,
                       out_h, out_w)


@kernel()
def depthwise3x3_serial(xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of, out_h,
                        out_w, parts):
    """``depthwise3x3`` on the calling thread alone."""
    r0, r1 = _all(n_img * out_h)
    depthwise_rows(r0, r1, xf, n_img, height, width, chans, w, bias, stride, pad_top, pad_left, relu6, of,
                   out_h, out_w)


def depthwise_conv2d(x, w, bias, stride, pad_top, pad_left, relu6, out, serial=False):
    """Depthwise 3x3 convolution with weights [3, 3, C] (the multiplier-1 axis squeezed)."""
    if w.shape[0] != 3 or w.shape[1] != 3:
        raise ValueError(f"depthwise kernels must be 3x3, got {w.shape[:2]}")
    depthwise = depthwise3x3_serial if serial else depthwise3x3
    depthwise(x.reshape(-1), *x.shape, np.ascontiguousarray(w).reshape(-1), bias, stride, pad_top, pad_left, relu6,
              out.reshape(-1), *out.shape[1:3], numba.get_num_threads())


# --- the whole network in one call ----------------------------------------------------------

# Columns of a plan row: one layer's geometry, where its operands live, what follows the conv.
(OP_KIND, OP_K, OP_STRIDE, OP_IN_H, OP_IN_W, OP_IN_C, OP_OUT_H, OP_OUT_W, OP_OUT_C, OP_PAD_TOP,
 OP_PAD_LEFT, OP_RELU6, OP_RESIDUAL, OP_SRC, OP_DST, OP_RES, OP_W, OP_W_LEN, OP_B, OP_B_LEN, OP_TAPS,
 OP_TAPS_LEN) = range(22)
PLAN_COLUMNS = 22
KIND_CONV, KIND_DEPTHWISE, KIND_POINTWISE, KIND_INPUT = 0, 1, 2, 3
INPUT = -1          # OP_SRC / OP_RES value naming the network input rather than a buffer


@kernel(inline=True)
def _hub_input_padded(x, n_img, height, width, chans, pad_top, pad_left, out, out_h, out_w):
    """The input row of a plan (``KIND_INPUT``): images in [0, 1], x flat [N, H, W, C], to
    x * 2 - 1 (``reference.hub_input``) inside the stem's zero padding, out flat [N, out_h,
    out_w, C].  The stem then reads every patch in place, none of them reaching outside."""
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
    res = _operand(x, buffers, op[OP_RES])
    w = weights[op[OP_W]:op[OP_W] + op[OP_W_LEN]]
    b = biases[op[OP_B]:op[OP_B] + op[OP_B_LEN]]
    relu6 = op[OP_RELU6] != 0
    kind = op[OP_KIND]
    if kind == KIND_POINTWISE:
        pointwise(src, n_img * op[OP_IN_H] * op[OP_IN_W], op[OP_IN_C], w, b, op[OP_OUT_C], relu6,
                  res, op[OP_RESIDUAL] != 0, dst, parts)
    elif kind == KIND_INPUT:
        _hub_input_padded(src, n_img, op[OP_IN_H], op[OP_IN_W], op[OP_IN_C], op[OP_PAD_TOP], op[OP_PAD_LEFT], dst,
                          op[OP_OUT_H], op[OP_OUT_W])
    elif kind == KIND_DEPTHWISE:
        depthwise(src, n_img, op[OP_IN_H], op[OP_IN_W], op[OP_IN_C], w, b, op[OP_STRIDE],
                  op[OP_PAD_TOP], op[OP_PAD_LEFT], relu6, dst, op[OP_OUT_H], op[OP_OUT_W], parts)
    else:
        stem(src, n_img, op[OP_IN_H], op[OP_IN_W], op[OP_IN_C], op[OP_K], op[OP_STRIDE],
             op[OP_PAD_TOP], op[OP_PAD_LEFT], taps[op[OP_TAPS]:op[OP_TAPS] + op[OP_TAPS_LEN]],
             w, b, relu6, dst, op[OP_OUT_H], op[OP_OUT_W], op[OP_OUT_C], parts)


@kernel(inline=True)
def _run_serial(x, buffers, plan, weights, biases, taps, n_img):
    """Every plan row on the calling thread, with the serial kernels."""
    parts = n_img - n_img + 1     # unused by the serial kernels; not a literal (see ``_all``)
    for i in range(plan.shape[0]):
        _layer(plan[i], x, buffers, weights, biases, taps, n_img, parts, gemm_bias_act_serial,
               depthwise3x3_serial, conv2d_stem_serial)


@kernel()
def run_plan(x, buffers, plan, weights, biases, taps, n_img, parts):
    """Run the layers of ``plan`` (rows as above) for a pass of ``n_img`` images: layer outputs
    go to rows of ``buffers``, weights/biases/taps are slices of one flat array each.  One
    compiled call for the whole network: no interpreter work between layers.  Each layer is
    split into ``parts`` (the thread count) for Numba's threads."""
    for i in range(plan.shape[0]):
        _layer(plan[i], x, buffers, weights, biases, taps, n_img, parts, gemm_bias_act, depthwise3x3, conv2d_stem)


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
