"""The integer stem (a full k x k convolution on a few input channels) on four-byte dot products.

``integer_conv.conv_tasks`` multiplies int16 pairs of the centred input (``vpmaddwd``, 256-bit
sums).  With AVX-512 VNNI the stem's patch rows are read as the input bytes themselves, four at a
time: a 3 x 3 patch on 3 channels is three rows of 9 contiguous bytes, each taken as three quads
(the last quad's three extra bytes belong to the next pixel and meet zero weights).  A tile of 8
output pixels x 16 channels broadcasts each pixel's quad (``splat_quad``, a load) and adds its
``dot4`` with the quad's weights: 9 ``vpdpbusd`` per pixel and panel for a 3 x 3 x 3 patch.

* The input is copied, bytes as they are, into a buffer with the padding around it filled with
  the input zero point (``Conv4``; one 2-D copy per image, rows into their place): a padded tap
  then adds zp * w, which the folded bias (``integer_gemm.fold_zero_point``) takes away.
* The weights, centred, are int8 (int8 models: symmetric); a uint8 model's that leave int8 are
  split per channel into (w - zp - s) + s, and each quad's products with s are added too (18
  ``vpdpbusd`` a pixel: ``pack_quads``' split form).
* ``conv4_tasks`` has ``gemm_tasks``' arguments (its geometry in a fifth row of ``params``, as
  ``conv_tasks``), so ``integer_gemm.Gemm`` splits it, pads C_out to whole panels, and the
  fast graph's programs run it (kind ``CONV_BYTES``).

Tested against ``integer_reference`` (through ``integer_conv.conv2d``, which picks it).
"""

from __future__ import annotations

import numpy as np

from . import integer_simd as iv
from . import integer_wide as iw
from .integer_gemm import CHUNK, PANEL, Gemm, fold_zero_point
from .jit import kernel

GEOMETRY = 4        # the row of conv4_tasks' params that holds the geometry
QUAD = 4
SLACK = 64          # bytes after the padded input: a last quad reads up to three past a patch row


def usable() -> bool:
    """Whether ``integer_conv.bound`` should use this kernel: where ``dot4`` is the VNNI instruction."""
    return iw.DOT4_VNNI


def pack_quads(packed: np.ndarray, k: int, kc: int, c_out: int):
    """``integer_gemm.pack_pairs``' centred weights of k patch rows of kc taps -> (int8 [panel, row dy,
    quad q, channel, tap 4q..4q+3] (taps past kc zero), flat, viewed as int16; True if split), or None.
    Where a channel's centred weights leave int8 (a uint8 model), each is split into (w - zp - s) + s
    (as ``integer_depthwise4.pack_taps``) and [panel, quad q, channel, tap] vectors of s (zero past kc)
    follow: the kernel adds each quad's products with them too.  None if no such s exists."""
    panels = -(-c_out // PANEL)
    pairs = packed.size // (panels * PANEL * 2)
    centred = packed.reshape(panels, pairs, 2, PANEL // 2, 2).transpose(1, 4, 0, 2, 3).reshape(2 * pairs, -1)
    taps = centred[:k * kc].astype(np.int32)                           # [k * kc, panels * PANEL]
    lo, hi = taps.min(axis=0), taps.max(axis=0)
    s = np.maximum(hi - 127, 0) + np.minimum(lo + 128, 0)
    if np.any(hi - lo > 255) or np.any(s > 127):
        return None
    split = bool(np.any(s != 0))
    kq = -(-kc // QUAD)
    rows = np.zeros((k, kq * QUAD, panels * PANEL), np.int8)
    rows[:, :kc] = (taps - s).reshape(k, kc, -1)
    # [dy, q, tap, panel, c] -> [panel, dy, q, c, tap]
    blocks = [np.ascontiguousarray(rows.reshape(k, kq, QUAD, panels, PANEL).transpose(3, 0, 1, 4, 2)).reshape(-1)]
    if split:
        offsets = np.zeros((kq * QUAD, panels * PANEL), np.int8)
        offsets[:kc] = s
        blocks.append(np.ascontiguousarray(offsets.reshape(kq, QUAD, panels, PANEL).transpose(2, 0, 3, 1)).reshape(-1))
    return np.concatenate(blocks).view(np.int16), split


@kernel(inline=True)
def _next(at, r, ox, p, end, out_w, out_h, step, hp, stride, pitch):
    """The input address, row and column of the output pixel after p (the same pixel again past the
    task's end: computed, not stored)."""
    if p + 1 >= end:
        return at, r, ox
    if ox + 1 < out_w:
        return at + step, r, ox + 1
    r += 1
    n = r // out_h
    return (n * hp + (r - n * out_h) * stride) * pitch, r, 0


@kernel(inline=True)
def _store(acc, block, rounding, zero_point, lo, hi, out, o_at, p, end):
    if p < end:
        iv.store_bytes(out, o_at, iw.requantized_block(acc, block, rounding, zero_point, lo, hi))


@kernel(inline=True)
def _tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out, split):
    """``integer_gemm.gemm_tasks`` (same arguments) for a k x k convolution read in place from x
    [N, Hp, Wp, C] (flat bytes, the padding filled with the zero point), w packed by ``pack_quads``,
    params[GEOMETRY] = C, k, stride, Wp, Hp, out_h, out_w, quads per patch row.  Task t: (up to
    ``CHUNK`` output pixels) x (one panel of 16 channels), in tiles of 8 pixels that may span rows.
    ``split``: ``pack_quads``' split form, each quad's products with s added too."""
    c, k, stride = np.int64(params[GEOMETRY, 0]), np.int64(params[GEOMETRY, 1]), np.int64(params[GEOMETRY, 2])
    wp, hp = np.int64(params[GEOMETRY, 3]), np.int64(params[GEOMETRY, 4])
    out_h, out_w, kq = np.int64(params[GEOMETRY, 5]), np.int64(params[GEOMETRY, 6]), np.int64(params[GEOMETRY, 7])
    row = panels * PANEL
    pitch, step = wp * c, stride * c
    offsets_at = panels * k * kq * QUAD * PANEL         # bytes: the split form's s vectors
    for task in range(t0, t1):
        ch = task // panels
        g = task - ch * panels
        w_at = g * k * kq * QUAD * PANEL            # bytes
        s_at = offsets_at + g * kq * QUAD * PANEL
        co = g * PANEL
        block = iw.block_params(params, scales, co)     # the panel's requantization, in registers
        p = ch * CHUNK
        end = min(p + CHUNK, pixels)
        r = p // out_w
        ox = p - r * out_w
        n = r // out_h
        at = (n * hp + (r - n * out_h) * stride) * pitch + ox * step
        while p < end:
            x0 = at
            at, r, ox = _next(at, r, ox, p, end, out_w, out_h, step, hp, stride, pitch)
            x1 = at
            at, r, ox = _next(at, r, ox, p + 1, end, out_w, out_h, step, hp, stride, pitch)
            x2 = at
            at, r, ox = _next(at, r, ox, p + 2, end, out_w, out_h, step, hp, stride, pitch)
            x3 = at
            at, r, ox = _next(at, r, ox, p + 3, end, out_w, out_h, step, hp, stride, pitch)
            x4 = at
            at, r, ox = _next(at, r, ox, p + 4, end, out_w, out_h, step, hp, stride, pitch)
            x5 = at
            at, r, ox = _next(at, r, ox, p + 5, end, out_w, out_h, step, hp, stride, pitch)
            x6 = at
            at, r, ox = _next(at, r, ox, p + 6, end, out_w, out_h, step, hp, stride, pitch)
            x7 = at
            a0 = block[0]
            a1 = block[0]
            a2 = block[0]
            a3 = block[0]
            a4 = block[0]
            a5 = block[0]
            a6 = block[0]
            a7 = block[0]
            for dy in range(k):
                for q in range(kq):
                    wq = iw.load_quads(w, w_at + (dy * kq + q) * QUAD * PANEL)
                    t = dy * pitch + q * QUAD
                    v0, v1, v2, v3 = iw.splat_quad(x, x0 + t), iw.splat_quad(x, x1 + t), iw.splat_quad(x, x2 + t), \
                        iw.splat_quad(x, x3 + t)
                    v4, v5, v6, v7 = iw.splat_quad(x, x4 + t), iw.splat_quad(x, x5 + t), iw.splat_quad(x, x6 + t), \
                        iw.splat_quad(x, x7 + t)
                    a0, a1, a2, a3 = iw.dot4(a0, v0, wq), iw.dot4(a1, v1, wq), iw.dot4(a2, v2, wq), iw.dot4(a3, v3, wq)
                    a4, a5, a6, a7 = iw.dot4(a4, v4, wq), iw.dot4(a5, v5, wq), iw.dot4(a6, v6, wq), iw.dot4(a7, v7, wq)
                    if split:
                        sq = iw.load_quads(w, s_at + q * QUAD * PANEL)
                        a0, a1, a2, a3 = iw.dot4(a0, v0, sq), iw.dot4(a1, v1, sq), iw.dot4(a2, v2, sq), \
                            iw.dot4(a3, v3, sq)
                        a4, a5, a6, a7 = iw.dot4(a4, v4, sq), iw.dot4(a5, v5, sq), iw.dot4(a6, v6, sq), \
                            iw.dot4(a7, v7, sq)
            o = p * row + co
            _store(a0, block, rounding, zero_point, lo, hi, out, o, p, end)
            _store(a1, block, rounding, zero_point, lo, hi, out, o + row, p + 1, end)
            _store(a2, block, rounding, zero_point, lo, hi, out, o + 2 * row, p + 2, end)
            _store(a3, block, rounding, zero_point, lo, hi, out, o + 3 * row, p + 3, end)
            _store(a4, block, rounding, zero_point, lo, hi, out, o + 4 * row, p + 4, end)
            _store(a5, block, rounding, zero_point, lo, hi, out, o + 5 * row, p + 5, end)
            _store(a6, block, rounding, zero_point, lo, hi, out, o + 6 * row, p + 6, end)
            _store(a7, block, rounding, zero_point, lo, hi, out, o + 7 * row, p + 7, end)
            at, r, ox = _next(at, r, ox, p + 7, end, out_w, out_h, step, hp, stride, pitch)
            p += 8


@kernel()
def conv4_tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out):
    """``_tasks`` on ``pack_quads``' split form if ``w`` holds its s vectors too (a run-time flag: a
    kernel per form compiled 1.5 s more)."""
    _tasks(x, t0, t1, pixels, kp, w, panels, params, scales, rounding, zero_point, lo, hi, out,
           w.size * 2 > panels * kp * PANEL)


class Conv4:
    """``integer_conv.Conv`` on ``conv4_tasks``: the input bytes copied into ``padded`` (the zero point
    around them, written once), then the tasks through ``integer_gemm.Gemm``.  ``quads``: ``pack_quads``'
    (weights, split); ``packed``: the same as ``pack_pairs`` gave them (for the folded bias).  One thread at a time."""

    def __init__(self, x_shape, x_zero_point, packed, quads, k, stride, pad, out_hw, params, c_out, out_zero_point,
                 clamp, rounding="reference", scales=None, scratch=(None, None)):
        n, h, w, c = x_shape
        kq = -(-k * c // QUAD)
        hp = max(pad[0] + h + pad[1], (out_hw[0] - 1) * stride + k)
        wp = max(pad[2] + w + pad[3], (out_hw[1] - 1) * stride + k)
        self.shape = (n, h, w * c)
        self.padded = np.full(n * hp * wp * c + SLACK, x_zero_point, np.uint8)
        images = self.padded[:n * hp * wp * c].reshape(n, hp, wp * c)
        self.into = [images[i, pad[0]:pad[0] + h, pad[2] * c:(pad[2] + w) * c] for i in range(n)]
        geometry = np.zeros((GEOMETRY + 1, params.shape[1]), np.int32)
        geometry[:GEOMETRY] = fold_zero_point(packed, params, x_zero_point)
        geometry[GEOMETRY, :8] = c, k, stride, wp, hp, out_hw[0], out_hw[1], kq
        self.gemm = Gemm(n * out_hw[0] * out_hw[1], k * kq * QUAD, quads[0], geometry, c_out, out_zero_point, clamp,
                         rounding, scales, scratch[1], conv4_tasks)

    def _sources(self, x):
        rows = x.reshape(-1).view(np.uint8).reshape(self.shape)
        return [(dst, rows[i]) for i, dst in enumerate(self.into)]

    def calls(self, x, out):
        """As ``Gemm.calls``, after one ``np.copyto`` per image; None if x is not C-contiguous."""
        if not x.flags.c_contiguous:
            return None
        return [(np.copyto, pair) for pair in self._sources(x)] + self.gemm.calls(self.padded, out)

    def __call__(self, x, out):
        """x [N, H, W, C] (uint8) -> out, C-contiguous [N, OH, OW, C_out]."""
        for dst, src in self._sources(np.ascontiguousarray(x)):
            np.copyto(dst, src)
        return self.gemm(self.padded, out)
