"""The integer forward pass: a quantized graph run op by op with the integer reference kernels.

``QuantizedGraph(source)`` runs an ``IntegerGraph`` (``integer_graph.py``), given as such or
built from a version-2 weights file or from a uint8 (Google's QAT MobileNets) or int8 (the
TFLite converter's full-integer quantization) .tflite file; ``graph.run(x)`` takes the quantized input as LiteRT
does (uint8 or int8 NHWC, any batch) and returns the graph's outputs, byte for byte what
LiteRT's reference kernels give (or, with ``kernels=``, its optimized builtin kernels or its
default XNNPACK delegate).  The op sequence is the graph's own: each operator is one call to a
kernel of ``kernels/integer_reference.py`` (or ``integer_softmax.py``, ``integer_xnnpack.py``),
with the requantization parameters LiteRT derives from the tensors' scales and zero points.
``endpoints(x)`` names the outputs by TF-Slim endpoint when the graph is a MobileNet V1 or V2.

It deliberately does not: run fast, handle float or hybrid graphs, more than one subgraph, or
ops a MobileNet does not contain (``OPS`` lists those it does).
"""

from __future__ import annotations

import numpy as np

from .. import spec, weights_file
from .. import weights_file_v2 as v2
from ..errors import UnsupportedFormatError
from ..kernels import integer_reference as iref
from ..kernels import integer_softmax
from ..kernels import integer_xnnpack as ixnn
from weights_tools import tflite_ops as tfl
from . import integer_graph as ig

PADDING_VALID = ig.PADDING_VALID


KERNELS = ("reference", "optimized", "xnnpack")


class QuantizedGraph:
    """A parsed quantized TFLite graph and the means to run it.

    ``kernels="reference"`` reproduces LiteRT's reference kernels (``BUILTIN_REF``);
    ``"optimized"`` its optimized builtin kernels without a delegate, which round the
    convolutions' requantization ties upward instead of away from zero (it shows only where
    outputs below the zero point survive the activation: linear projections, logits) and
    compute a MEAN that keeps its dims another way (``integer_reference.mean_hw_optimized``);
    ``"xnnpack"`` LiteRT's default, the XNNPACK delegate, whose convolutions and global pools
    requantize in float32 and whose ADD has its own integer scheme (``kernels/integer_xnnpack.py``);
    the ops it does not take (SOFTMAX) run as the optimized kernels do.
    """

    def __init__(self, source, kernels: str = "reference"):
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        self.kernels = kernels
        self.optimized = kernels in ("optimized", "xnnpack")
        self.sub = _integer_graph(source)
        self.file = self.sub.file
        self.options = self.sub.options
        unknown = sorted({tfl.OP_NAMES.get(op.opcode, str(op.opcode)) for op in self.sub.operators
                          if op.opcode not in OPS})
        if unknown:
            raise UnsupportedFormatError(f"{self.file}: operators {unknown} are not supported")

    @property
    def ops(self) -> dict:
        """The function of each operator code (a subclass may replace some)."""
        return OPS

    # --- tensors ---------------------------------------------------------------------------

    def tensor(self, index: int) -> ig.Tensor:
        return self.sub.tensors[index]

    def dtype(self, index: int) -> np.dtype:
        return self.tensor(index).dtype

    def scale(self, index: int) -> float:
        """The per-tensor scale, as the float32 TFLite stores."""
        return float(self.tensor(index).quantization.scale[0])

    def zero_point(self, index: int) -> int:
        return int(self.tensor(index).quantization.zero_point[0])

    def constant(self, index: int) -> np.ndarray | None:
        """The stored value of a constant tensor (weights, bias, shape, axes), else None."""
        return None if index < 0 else self.tensor(index).data

    @property
    def input_index(self) -> int:
        return self.sub.inputs[0]

    # --- TF-Slim names ---------------------------------------------------------------------

    def endpoint_tensors(self) -> dict[str, int]:
        """TF-Slim endpoint name (``Conv2d_5_pointwise``, ``layer_7/output``, ``global_pool``) ->
        tensor index, when the convs before the global pool are MobileNet V1's or V2's sequence;
        otherwise empty.  A V2 residual block's endpoints are the ADD's output."""
        ops = self.sub.operators
        pool = next((i for i, op in enumerate(ops) if op.opcode in (tfl.AVERAGE_POOL_2D, tfl.MEAN)), None)
        convs = [op for op in ops[:pool] if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D)]
        found = "".join("D" if op.opcode == tfl.DEPTHWISE_CONV_2D else "C" for op in convs)
        for name in spec.BUILDERS:
            arch = spec.build(name, 1.0)               # the op sequence does not depend on the width
            if "".join("D" if layer.kind == "depthwise" else "C" for layer in arch.layers) == found:
                break
        else:
            return {}
        adds = {k: op.outputs[0] for op in ops if op.opcode == tfl.ADD for k in op.inputs}
        out = {}
        for op, layer in zip(convs, arch.layers):
            tensor = adds[op.outputs[0]] if layer.adds_residual else op.outputs[0]
            out.update({endpoint: tensor for endpoint in layer.endpoints})
        if pool is not None:
            out[arch.pool_endpoint] = ops[pool].outputs[0]
        return out

    def endpoints(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, float, int]]:
        """Every TF-Slim endpoint for the quantized input ``x``: (values, scale, zero point)."""
        tensors = self.endpoint_tensors()
        values = {}

        def keep(i, op, y):
            if op.outputs[0] in tensors.values():
                values[op.outputs[0]] = y

        self.run(x, on_op=keep)
        return {name: (values[k], self.scale(k), self.zero_point(k)) for name, k in tensors.items()}

    # --- running ---------------------------------------------------------------------------

    def run(self, x: np.ndarray, on_op=None, outputs=None) -> list[np.ndarray]:
        """The graph's outputs for the quantized input ``x``, or the tensors listed in ``outputs``
        (indices; the ops after the last of them are not run); ``on_op(i, op, y)`` sees every
        op's output."""
        x = np.asarray(x)
        if x.dtype != self.dtype(self.input_index):
            raise TypeError(f"{self.file}: the input is {self.dtype(self.input_index)}, got {x.dtype}")
        outputs = self.sub.outputs if outputs is None else list(outputs)
        values = {self.input_index: x}
        for i, op in enumerate(self.sub.operators[:self.ops_needed(outputs)]):
            inputs = [values.get(k) if self.constant(k) is None else self.constant(k) for k in op.inputs]
            y = self.ops[op.opcode](self, op, self.options[i], inputs)
            values[op.outputs[0]] = y
            if on_op is not None:
                on_op(i, op, y)
        return [values[k] for k in outputs]

    def ops_needed(self, outputs) -> int:
        """How many ops, from the first, compute every tensor of ``outputs``."""
        made = self.__dict__.get("_made")
        if made is None:                    # which op makes each tensor: once per graph, not per call
            made = self._made = {op.outputs[0]: i for i, op in enumerate(self.sub.operators)}
        return 1 + max((made.get(k, -1) for k in outputs), default=-1)


# --- one function per operator: (graph, op, options, input values) -> output values -----------

def _integer_graph(source) -> ig.IntegerGraph:
    """An ``IntegerGraph`` as given, or built from a .tflite or a version-2 weights file."""
    if isinstance(source, ig.IntegerGraph):
        return source
    if weights_file.is_weights_file(source):
        qw = weights_file.read(source)
        if not isinstance(qw, v2.QuantizedWeightsFile):
            raise UnsupportedFormatError(f"{source}: a float (version-1) weights file; the integer path "
                                         "runs quantized (version-2) files")
        return ig.from_weights(qw, tuple(qw.attrs["default_input_size"]))
    return ig.from_tflite(source)


def _out(graph: QuantizedGraph, op):
    k = op.outputs[0]
    return graph.scale(k), graph.zero_point(k), graph.dtype(k)


def _padding(padding: int, in_hw, kernel_hw, stride_hw):
    """(out_hw, (top, bottom, left, right)): TF SAME (the odd pixel after) or VALID."""
    if padding == PADDING_VALID:
        return tuple((i - k) // s + 1 for i, k, s in zip(in_hw, kernel_hw, stride_hw)), (0, 0, 0, 0)
    (oh, top, bottom), (ow, left, right) = (spec.same_padding(i, k, s)
                                            for i, k, s in zip(in_hw, kernel_hw, stride_hw))
    return (oh, ow), (top, bottom, left, right)


def _conv_common(graph: QuantizedGraph, op, inputs, depthwise: bool):
    x, w, bias = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    opts = op.conv_options
    if (opts.dilation_h, opts.dilation_w) != (1, 1) or opts.stride_h != opts.stride_w:
        raise UnsupportedFormatError(f"{graph.file}: dilated convolutions and unequal strides are not supported")
    w_q = graph.tensor(op.inputs[1]).quantization
    # TFLite's layouts put the output channel first: conv OHWI, depthwise [1, kh, kw, C].  Moving
    # it last gives the TF-Slim layouts of the reference kernels (HWIO, [kh, kw, C, 1]).
    w_hwio = w.transpose(1, 2, 3, 0)
    out_hw, pad = _padding(opts.padding, x.shape[1:3], w.shape[1:3], (opts.stride_h, opts.stride_w))
    if bias is None:
        bias = np.zeros(w.shape[3] if depthwise else w.shape[0], np.int32)
    accumulate = iref.depthwise_conv2d_accumulate if depthwise else iref.conv2d_accumulate
    acc = accumulate(x, graph.zero_point(op.inputs[0]), w_hwio, w_q.zero_point, bias, opts.stride_h, pad, out_hw)
    out_scale, out_zp, out_dtype = _out(graph, op)
    in_dtype = graph.dtype(op.inputs[0])
    clamp = iref.activation_range(tfl.ACTIVATION_NAMES[opts.activation], out_scale, out_zp, out_dtype)
    if graph.kernels == "xnnpack":
        scales = ixnn.conv_scales(graph.scale(op.inputs[0]), w_q.scale, out_scale)
        return ixnn.requantize_fp32(acc, scales, out_zp, clamp, out_dtype)
    multiplier, shift = iref.conv_multipliers(graph.scale(op.inputs[0]), w_q.scale, out_scale,
                                              per_tensor=in_dtype == np.uint8)
    ties_up = graph.optimized
    return iref.requantize(acc, multiplier, shift, out_zp, clamp, out_dtype, ties_up)


def conv_2d(graph, op, options, inputs):
    return _conv_common(graph, op, inputs, depthwise=False)


def depthwise_conv_2d(graph, op, options, inputs):
    w = inputs[1]
    if w.shape[0] != 1 or w.shape[3] != inputs[0].shape[3]:
        raise UnsupportedFormatError(f"{graph.file}: depthwise multiplier other than 1")
    return _conv_common(graph, op, inputs, depthwise=True)


def fully_connected(graph, op, options, inputs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    w_q = graph.tensor(op.inputs[1]).quantization
    acc = iref.fully_connected_accumulate(x.reshape(-1, w.shape[1]), graph.zero_point(op.inputs[0]), w,
                                          w_q.zero_point, bias)
    out_scale, out_zp, out_dtype = _out(graph, op)
    # FULLY_CONNECTED with one filter scale takes the legacy float32 product for uint8 and int8.
    multiplier, shift = iref.conv_multipliers(graph.scale(op.inputs[0]), w_q.scale, out_scale,
                                              per_tensor=len(w_q.scale) == 1)
    clamp = iref.activation_range(options["activation"], out_scale, out_zp, out_dtype)
    y = iref.requantize(acc, multiplier, shift, out_zp, clamp, out_dtype)
    if options["keep_num_dims"]:
        return y.reshape(*x.shape[:-1], w.shape[0])
    return y


def add(graph, op, options, inputs):
    a, b = inputs
    out_scale, out_zp, out_dtype = _out(graph, op)
    clamp = iref.activation_range(options["activation"], out_scale, out_zp, out_dtype)
    add = ixnn.add if graph.kernels == "xnnpack" else iref.add
    return add(a, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]),
                    b, graph.scale(op.inputs[1]), graph.zero_point(op.inputs[1]),
                    out_scale, out_zp, clamp, out_dtype)


def average_pool_2d(graph, op, options, inputs):
    x = inputs[0]
    window, stride = (options["filter_h"], options["filter_w"]), (options["stride_h"], options["stride_w"])
    out_hw, pad = _padding(options["padding"], x.shape[1:3], window, stride)
    out_scale, out_zp, out_dtype = _out(graph, op)
    if graph.kernels == "xnnpack" and out_hw == (1, 1) and pad == (0, 0, 0, 0):    # a global pool
        return ixnn.global_average(x, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]),
                                   out_scale, out_zp, out_dtype)
    clamp = iref.activation_range(options["activation"], out_scale, out_zp, out_dtype)
    return iref.average_pool(x, window, stride, pad, out_hw, clamp, out_dtype)


def mean(graph, op, options, inputs):
    x, axes = inputs
    if sorted(int(a) % x.ndim for a in np.reshape(axes, -1)) != [1, 2] or x.ndim != 4:
        raise UnsupportedFormatError(f"{graph.file}: MEAN over axes {list(axes)}; only H and W")
    out_scale, out_zp, out_dtype = _out(graph, op)
    if graph.kernels == "xnnpack":
        return ixnn.global_average(x, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]), out_scale,
                                   out_zp, out_dtype, keepdims=bool(options["keep_dims"]))
    # The optimized kernel has its own path for a 4-D mean over H and W that keeps the dims.
    mean_hw = iref.mean_hw_optimized if graph.optimized and options["keep_dims"] else iref.mean_hw
    y = mean_hw(x, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]), out_scale, out_zp, out_dtype)
    return y[:, None, None, :] if options["keep_dims"] else y


def softmax(graph, op, options, inputs):
    return integer_softmax.softmax(inputs[0], options["beta"], graph.scale(op.inputs[0]), _out(graph, op)[2])


def reshape(graph, op, options, inputs):
    """RESHAPE and SQUEEZE: the output tensor's shape, with the batch of the input."""
    shape = graph.tensor(op.outputs[0]).shape
    return inputs[0].reshape(inputs[0].shape[0], *shape[1:])


def quantize(graph, op, options, inputs):
    x = inputs[0]
    out_scale, out_zp, out_dtype = _out(graph, op)
    if x.dtype == np.float32:
        return iref.quantize(x, out_scale, out_zp, out_dtype)
    return iref.requantize_tensor(x, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]),
                                  out_scale, out_zp, out_dtype)


def dequantize(graph, op, options, inputs):
    return iref.dequantize(inputs[0], graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]))


OPS = {tfl.CONV_2D: conv_2d, tfl.DEPTHWISE_CONV_2D: depthwise_conv_2d, tfl.FULLY_CONNECTED: fully_connected,
       tfl.ADD: add, tfl.AVERAGE_POOL_2D: average_pool_2d, tfl.MEAN: mean, tfl.SOFTMAX: softmax,
       tfl.RESHAPE: reshape, tfl.SQUEEZE: reshape, tfl.QUANTIZE: quantize,
       tfl.DEQUANTIZE: dequantize}
