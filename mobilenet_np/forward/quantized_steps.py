"""Each op of the fast integer graph bound to its Numba kernel (``forward/quantized_engine.py``).

``_pack`` puts a convolution's weights in the kernels' layouts with its requantization parameters
(once, at load); a ``_PREPARE`` function binds one op, for one input shape, to its kernel with every
argument that does not depend on the values, and returns the step (``_Bound``), its output's shape,
dtype and form (True: the step runs on int8 tensors held as uint8 + 128, ``_shift``), or None for
an op left to the NumPy op.
"""

from __future__ import annotations

import numpy as np

from ..kernels import integer_add as iadd
from ..kernels import integer_conv as iconv
from ..kernels import integer_depthwise as idw
from ..kernels import integer_dot4 as idot
from ..kernels import integer_gemm as ig
from ..kernels import integer_reference as iref
from ..kernels import integer_softmax as isoft
from ..kernels import integer_xnnpack as ixnn
from .quantized import QuantizedGraph, _padding
from weights_tools import tflite_ops as tfl


class _Bound:
    """A kernel step: the bound kernel called on the step's first ``arity`` inputs and its output buffer;
    ``calls`` gives the compiled calls that this makes for the same arrays (``_Plan._compiled_calls``)."""

    __slots__ = ("kernel", "arity")

    def __init__(self, kernel, arity: int = 1):
        self.kernel, self.arity = kernel, arity

    def __call__(self, inputs, out):
        return self.kernel(*inputs[:self.arity], out)

    def calls(self, inputs, out):
        return self.kernel.calls(*inputs[:self.arity], out)


def _shift(graph: QuantizedGraph, op) -> int:
    """128 when the op's input and output are int8 (its kernel step runs on uint8 + 128), else 0."""
    int8 = np.dtype(np.int8)
    return 128 if graph.dtype(op.inputs[0]) == int8 and graph.dtype(op.outputs[0]) == int8 else 0


def _pack(graph: QuantizedGraph, op) -> dict:
    """Weights in the kernels' layouts and the requantization parameters of one conv op (an int8
    op's zero points and clamp + 128: its step runs on uint8 + 128, ``_shift``)."""
    w = graph.constant(op.inputs[1])
    w_q = graph.tensor(op.inputs[1]).quantization
    depthwise = op.opcode == tfl.DEPTHWISE_CONV_2D
    c_out = w.shape[3] if depthwise else w.shape[0]
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else np.zeros(c_out, np.int32)
    in_scale, out_scale = graph.scale(op.inputs[0]), graph.scale(op.outputs[0])
    multiplier, shift = iref.conv_multipliers(in_scale, w_q.scale, out_scale,
                                              per_tensor=graph.dtype(op.inputs[0]) == np.uint8)
    out_zp, out_dtype = graph.zero_point(op.outputs[0]), graph.dtype(op.outputs[0])
    clamp = iref.activation_range(tfl.ACTIVATION_NAMES[op.conv_options.activation], out_scale, out_zp, out_dtype)
    params = ig.requantization_params(bias, multiplier, shift, c_out)
    up = _shift(graph, op)
    packed = {"c_out": c_out, "kernel": w.shape[1], "depthwise": depthwise, "params": params,
              "scales": ig.xnnpack_scales(ixnn.conv_scales(in_scale, w_q.scale, out_scale), c_out),
              "clamp": (clamp[0] + up, clamp[1] + up), "in_zp": graph.zero_point(op.inputs[0]) + up,
              "out_zp": out_zp + up, "out_dtype": np.dtype(np.uint8) if up else out_dtype, "form": bool(up)}
    if depthwise:      # TFLite [1, kh, kw, C] -> [kh, kw, C, 1]
        packed["weights"] = idw.pack_depthwise(w.transpose(1, 2, 3, 0), w_q.zero_point)
        packed["folded"] = idw.fold_zero_point(packed["weights"], params, w.shape[1], packed["in_zp"])
    else:              # TFLite OHWI -> [kh * kw * C_in, C_out], the order of the gathered patches
        matrix = w.reshape(c_out, -1).T
        pointwise = (w.shape[1], op.conv_options.stride_h) == (1, 1)       # the layers ``Pointwise`` runs
        quads = idot.pack_quads(matrix, w_q.zero_point) if pointwise and idot.usable() else None
        if quads is not None:      # on VNNI's four-byte products (integer_dot4.py), with its kernel
            packed["weights"], packed["tasks"] = quads
            packed["folded"] = idot.fold_zero_point(matrix, w_q.zero_point, params, packed["in_zp"])
        else:
            packed["weights"] = ig.pack_pairs(matrix, w_q.zero_point)
            packed["folded"] = ig.fold_zero_point(packed["weights"], params, packed["in_zp"])
    return packed


# --- each op's step: (step(inputs, out) -> out, the output's shape, dtype, form), or None for the NumPy op
# (form: True when it runs on uint8 + 128, ``_shift``; ``scratch``: the plan's two
# ``integer_calls.Scratch``, or (None, None) for buffers of the step's own)

def _prepare_conv(graph: QuantizedGraph, op, options, inputs, scratch):
    p = graph.packed[id(op)]
    x, opts = inputs[0], op.conv_options
    k, stride = p["kernel"], opts.stride_h
    out_hw, pad = _padding(opts.padding, x.shape[1:3], (k, k), (opts.stride_h, opts.stride_w))
    requantize = (p["params"], p["out_zp"], p["clamp"], graph.kernels, p["scales"], p["folded"])
    x_dtype = np.dtype(np.uint8) if p["form"] else x.dtype
    if p["depthwise"]:
        kernel = idw.Depthwise(x.shape, p["in_zp"], p["weights"], k, stride, pad, out_hw, *requantize, x_dtype)
    elif (k, stride) == (1, 1):
        params, out_zp, clamp, rounding, scales, folded = requantize
        kernel = ig.Pointwise(x.size // x.shape[3], x.shape[3], p["in_zp"], p["weights"], params, p["c_out"], out_zp,
                              clamp, rounding, scales, folded, scratch, p.get("tasks"))
    else:
        params, *others = requantize
        kernel = iconv.bound(x.shape, x_dtype, p["in_zp"], p["weights"], k, stride, pad, out_hw, params, p["c_out"],
                             *others, scratch)
    return _Bound(kernel), (x.shape[0], *out_hw, p["c_out"]), p["out_dtype"], p["form"]


def _prepare_softmax(graph: QuantizedGraph, op, options, inputs, scratch):
    """``integer_softmax.Softmax``: the bytes of the NumPy op, its tables made once per op."""
    fast = graph.packed.get(id(op))
    if fast is None:
        fast = isoft.Softmax(options["beta"], graph.scale(op.inputs[0]), graph.dtype(op.outputs[0]))
        graph.packed[id(op)] = fast
    return (lambda inputs, out: fast(inputs[0])), None, None, False


# The ADD in Numba (XNNPACK's, or else LiteRT's reference one); XNNPACK's global pools (other sets: NumPy)

def _prepare_add(graph: QuantizedGraph, op, options, inputs, scratch):
    a, b = inputs
    k, up = op.outputs[0], _shift(graph, op) if graph.dtype(op.inputs[1]) == graph.dtype(op.inputs[0]) else 0
    scales = (graph.scale(op.inputs[0]), graph.scale(op.inputs[1]), graph.scale(k))
    reference = graph.kernels != "xnnpack"
    if a.shape != b.shape or (reference and iref.add_multipliers(*scales)[2][1] > 0):
        return None         # broadcasting, or an output multiplier >= 1 (the NumPy op checks the int32 range)
    out_zp, out_dtype = graph.zero_point(k), graph.dtype(k)
    lo, hi = iref.activation_range(options["activation"], scales[2], out_zp, out_dtype)
    # the plan flips activations only: a constant operand keeps its int8 values and zero point
    ups = [0 if graph.constant(j) is not None else up for j in op.inputs]
    zero_points = (graph.zero_point(op.inputs[0]) + ups[0], graph.zero_point(op.inputs[1]) + ups[1])
    if reference:
        kernel = iadd.ReferenceAdd(scales, zero_points, (lo + up, hi + up), out_zp + up)
    else:
        kernel = iadd.Add(iadd.add_params(scales[0], zero_points[0], scales[1], zero_points[1], scales[2]),
                          (lo + up, hi + up), out_zp + up)
    return _Bound(kernel, 2), a.shape, np.uint8 if up else out_dtype, bool(up)


def _global(graph: QuantizedGraph, op, x, out_shape):
    k, up = op.outputs[0], _shift(graph, op)
    dtype = np.dtype(np.uint8) if up else graph.dtype(k)
    kernel = iadd.GlobalAverage(x.shape, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]) + up, graph.scale(k),
                                graph.zero_point(k) + up, iref.DTYPE_RANGES[dtype])
    return _Bound(kernel), out_shape, dtype, bool(up)


def _prepare_average_pool(graph: QuantizedGraph, op, options, inputs, scratch):
    x = inputs[0]
    window, stride = (options["filter_h"], options["filter_w"]), (options["stride_h"], options["stride_w"])
    out_hw, pad = _padding(options["padding"], x.shape[1:3], window, stride)
    if graph.kernels != "xnnpack" or out_hw != (1, 1) or pad != (0, 0, 0, 0) or x.ndim != 4:
        return None
    return _global(graph, op, x, (x.shape[0], 1, 1, x.shape[3]))


def _prepare_mean(graph: QuantizedGraph, op, options, inputs, scratch):
    x, axes = inputs
    if graph.kernels != "xnnpack" or x.ndim != 4 or sorted(int(a) % 4 for a in np.reshape(axes, -1)) != [1, 2]:
        return None                                             # the NumPy op (which refuses others by name)
    keep = bool(options["keep_dims"])
    return _global(graph, op, x, (x.shape[0], 1, 1, x.shape[3]) if keep else (x.shape[0], x.shape[3]))


_PREPARE = {tfl.CONV_2D: _prepare_conv, tfl.DEPTHWISE_CONV_2D: _prepare_conv, tfl.SOFTMAX: _prepare_softmax,
            tfl.ADD: _prepare_add, tfl.AVERAGE_POOL_2D: _prepare_average_pool, tfl.MEAN: _prepare_mean}
