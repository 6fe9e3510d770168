"""The integer forward pass on the Numba integer kernels: ``QuantizedGraph`` with its
convolutions replaced by ``kernels/integer_gemm.py`` and ``kernels/integer_depthwise.py``.

``FastQuantizedGraph(path, kernels=...)`` gives the same bytes as ``QuantizedGraph(path,
kernels=...)`` for each of LiteRT's three kernel sets (the tests compare every op).  Weights
are packed once, at load.  1x1 convolutions at stride 1 go straight to the GEMM; other full
convolutions (the 3x3 stem) are turned into one by gathering each output pixel's k x k x C_in
patch, with the padding filled by the input's zero point (which centres to nothing);
depthwise convolutions use the depthwise kernel.  ADD, pools, softmax and reshapes stay the
NumPy reference ops: they are a small part of the time.

Deliberately a first step: one thread, no fused layers, activations in NumPy arrays between ops.
"""

from __future__ import annotations

import numpy as np

from ..kernels import integer_depthwise as idw
from ..kernels import integer_gemm as ig
from ..kernels import integer_reference as iref
from ..kernels import integer_xnnpack as ixnn
from .quantized import OPS, QuantizedGraph, _padding
from weights_tools import tflite_ops as tfl


class FastQuantizedGraph(QuantizedGraph):
    """``QuantizedGraph`` whose CONV_2D and DEPTHWISE_CONV_2D run on the Numba kernels."""

    def __init__(self, path, kernels: str = "reference"):
        super().__init__(path, kernels)
        self.packed = {i: _pack(self, op) for i, op in enumerate(self.sub.operators)
                       if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D)}
        self._ops = {**OPS, tfl.CONV_2D: _conv, tfl.DEPTHWISE_CONV_2D: _conv}

    @property
    def ops(self) -> dict:
        return self._ops


def _pack(graph: QuantizedGraph, op) -> dict:
    """Weights in the kernels' layouts and the requantization parameters of one conv op."""
    w = graph.constant(op.inputs[1])
    w_q = graph.tensor(op.inputs[1]).quantization
    depthwise = op.opcode == tfl.DEPTHWISE_CONV_2D
    c_out = w.shape[3] if depthwise else w.shape[0]
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else np.zeros(c_out, np.int32)
    in_scale, out_scale = graph.scale(op.inputs[0]), graph.scale(op.outputs[0])
    multiplier, shift = iref.conv_multipliers(in_scale, w_q.scale, out_scale,
                                              per_tensor=graph.dtype(op.inputs[0]) == np.uint8)
    out_zp, out_dtype = graph.zero_point(op.outputs[0]), graph.dtype(op.outputs[0])
    if depthwise:      # TFLite [1, kh, kw, C] -> [kh, kw, C, 1]
        weights = idw.pack_depthwise(w.transpose(1, 2, 3, 0), w_q.zero_point)
    else:              # TFLite OHWI -> [kh * kw * C_in, C_out], the order of the gathered patches
        weights = ig.pack_pairs(w.reshape(c_out, -1).T, w_q.zero_point)
    return {"weights": weights, "c_out": c_out, "kernel": w.shape[1], "depthwise": depthwise,
            "params": ig.requantization_params(bias, multiplier, shift, c_out),
            "scales": ig.xnnpack_scales(ixnn.conv_scales(in_scale, w_q.scale, out_scale), c_out),
            "clamp": iref.activation_range(tfl.ACTIVATION_NAMES[op.conv_options.activation], out_scale,
                                           out_zp, out_dtype)}


def _patches(x, zero_point: int, k: int, stride: int, pad, out_hw) -> np.ndarray:
    """[N * OH * OW, k * k * C]: each output pixel's input patch (rows dy, then dx, then C, as
    TFLite's OHWI weights are laid out), the padding filled with the zero point."""
    top, bottom, left, right = pad
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=zero_point)
    oh, ow = out_hw
    taps = [padded[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride, :]
            for dy in range(k) for dx in range(k)]
    return np.concatenate(taps, axis=3).reshape(x.shape[0] * oh * ow, -1)


def _conv(graph: FastQuantizedGraph, op, options, inputs):
    packed = graph.packed[graph.sub.operators.index(op)]
    x, opts = inputs[0], op.conv_options
    k, stride = packed["kernel"], opts.stride_h
    out_hw, pad = _padding(opts.padding, x.shape[1:3], (k, k), (opts.stride_h, opts.stride_w))
    zp_in, out_zp = graph.zero_point(op.inputs[0]), graph.zero_point(op.outputs[0])
    out = np.empty((x.shape[0], *out_hw, packed["c_out"]), graph.dtype(op.outputs[0]))
    if packed["depthwise"]:
        return idw.depthwise_conv2d(x, zp_in, packed["weights"], k, stride, pad, out_hw, packed["params"], out_zp,
                                    packed["clamp"], out, graph.kernels, packed["scales"])
    rows = x.reshape(-1, x.shape[3]) if (k, stride) == (1, 1) else _patches(x, zp_in, k, stride, pad, out_hw)
    ig.pointwise_conv2d(np.ascontiguousarray(rows), zp_in, packed["weights"], packed["params"], packed["c_out"],
                        out_zp, packed["clamp"], out.reshape(-1, packed["c_out"]), graph.kernels, packed["scales"])
    return out
