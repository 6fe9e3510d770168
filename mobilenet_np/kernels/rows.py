"""Plan rows: one layer of a compiled forward pass as a row of integers, and its builder.

A *plan* is an int64 array with one row per layer; ``plan.run_plan`` walks it in one compiled
call.  The compiled code reads a row by the ``OP_*`` column names below; Python code never fills
one by hand but through ``plan_row``, which takes every column as a keyword argument.  The layer
kernels (``gemm.py``, ``depthwise.py``, ``stem.py``) take the row itself rather than a dozen
scalars, so the same compiled kernel serves the plan runner and the one-layer wrappers the tests
call.  This module holds no compiled code.
"""

from __future__ import annotations

import numpy as np

# Columns of a plan row: one layer's geometry, where its operands live, what follows the conv.
COLUMNS = ("kind", "k", "stride", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "pad_top",
           "pad_left", "relu6", "residual", "src", "dst", "res", "w", "w_len", "b", "b_len", "taps",
           "taps_len")
(OP_KIND, OP_K, OP_STRIDE, OP_IN_H, OP_IN_W, OP_IN_C, OP_OUT_H, OP_OUT_W, OP_OUT_C, OP_PAD_TOP,
 OP_PAD_LEFT, OP_RELU6, OP_RESIDUAL, OP_SRC, OP_DST, OP_RES, OP_W, OP_W_LEN, OP_B, OP_B_LEN, OP_TAPS,
 OP_TAPS_LEN) = range(len(COLUMNS))
PLAN_COLUMNS = len(COLUMNS)

KIND_CONV, KIND_DEPTHWISE, KIND_POINTWISE, KIND_INPUT = 0, 1, 2, 3
KINDS = {"conv": KIND_CONV, "depthwise": KIND_DEPTHWISE, "pointwise": KIND_POINTWISE, "input": KIND_INPUT}
INPUT = -1          # OP_SRC / OP_RES value naming the network input rather than a buffer


def plan_row(kind: str, *, in_hw: tuple[int, int], in_c: int, out_hw: tuple[int, int], out_c: int,
             k: int = 1, stride: int = 1, pad_top: int = 0, pad_left: int = 0, relu6: bool = False,
             residual: bool = False, src: int = 0, dst: int = 0, res: int | None = None,
             w: tuple[int, int] = (0, 0), b: tuple[int, int] = (0, 0),
             taps: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One plan row.  ``kind``: a key of ``KINDS``; ``src``/``dst``/``res``: buffer rows (or
    ``INPUT``) the layer reads, writes and adds (``res`` defaults to ``dst``, a harmless operand
    when ``residual`` is off); ``w``/``b``/``taps``: (offset, length) spans in the flat weight,
    bias and tap-offset arrays."""
    row = np.zeros(PLAN_COLUMNS, np.int64)
    row[OP_KIND] = KINDS[kind]
    row[OP_K], row[OP_STRIDE] = k, stride
    row[OP_IN_H], row[OP_IN_W], row[OP_IN_C] = *in_hw, in_c
    row[OP_OUT_H], row[OP_OUT_W], row[OP_OUT_C] = *out_hw, out_c
    row[OP_PAD_TOP], row[OP_PAD_LEFT] = pad_top, pad_left
    row[OP_RELU6], row[OP_RESIDUAL] = relu6, residual
    row[OP_SRC], row[OP_DST], row[OP_RES] = src, dst, dst if res is None else res
    row[OP_W], row[OP_W_LEN] = w
    row[OP_B], row[OP_B_LEN] = b
    row[OP_TAPS], row[OP_TAPS_LEN] = taps
    return row
