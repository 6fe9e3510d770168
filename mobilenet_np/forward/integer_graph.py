"""The integer graph: a quantized network as a plain list of tensors and operators, in memory.

``forward/quantized.py`` runs an ``IntegerGraph`` op by op; it does not care where the graph
came from.  Two builders make one:

* ``from_tflite(path)``: a quantized .tflite file's first subgraph, as its flatbuffer has it
  (tensors, constants, operators in order, their options);
* ``from_weights(qw, input_hw)``: a version-2 weights file (``weights_file_v2``), driven by the
  architecture: each layer of ``spec`` emits its CONV_2D or DEPTHWISE_CONV_2D (TF SAME padding,
  the spec's stride, the stored fused activation), each V2 residual block its ADD, then the
  stored global pool op, the logits CONV_2D + RESHAPE or FULLY_CONNECTED, and SOFTMAX.

The vocabulary is TFLite's, because the semantics are: operator codes and fused-activation
codes are its builtin numbers (``weights_tools.tflite_ops``), constants keep its layouts
(conv weights OHWI, depthwise ``[1, kh, kw, C]``, fully connected ``[K, C]``), and options
are what its operators carry.  Tensor shapes are those of batch 1; the ops take any batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import spec
from .. import weights_file_v2 as v2
from ..errors import CorruptFileError, UnsupportedFormatError
from weights_tools import tflite_ops as tfl

PADDING_SAME, PADDING_VALID = 0, 1
ACTIVATION_CODES = {name: code for code, name in tfl.ACTIVATION_NAMES.items()}


@dataclass(frozen=True)
class Quantization:
    scale: np.ndarray              # float32, one per tensor or one per channel
    zero_point: np.ndarray         # integers, as long as scale
    quantized_dimension: int = 0


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype | None         # None: a type the integer path does not handle
    quantization: Quantization | None
    data: np.ndarray | None = None  # the value of a constant, else None


@dataclass(frozen=True)
class ConvOptions:
    padding: int                   # PADDING_SAME or PADDING_VALID
    stride_h: int
    stride_w: int
    activation: int                # a code of tfl.ACTIVATION_NAMES
    dilation_h: int = 1
    dilation_w: int = 1


@dataclass(frozen=True)
class Operator:
    opcode: int                    # a TFLite builtin operator code
    inputs: tuple[int, ...]        # tensor indices, -1 = optional input left out
    outputs: tuple[int, ...]
    conv_options: ConvOptions | None = None


@dataclass(frozen=True)
class IntegerGraph:
    file: str
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]
    options: tuple[dict, ...]      # per operator: pool window, ADD activation, softmax beta, ...


# --- from a .tflite ---------------------------------------------------------------------------

def from_tflite(path: str | Path) -> IntegerGraph:
    """The first (only) subgraph of a .tflite file."""
    file = str(path)
    graph = tfl.read_graph(tfl.read_model_bytes(path), file)
    if len(graph.model.subgraphs) != 1:
        raise UnsupportedFormatError(f"{file}: {len(graph.model.subgraphs)} subgraphs; expected 1")
    sub = graph.model.subgraphs[0]
    tensors = []
    for t in sub.tensors:
        dtype = tfl.TENSOR_DTYPES.get(t.type)
        data = graph.model.buffers[t.buffer]
        value = None
        if len(data) and dtype is not None:
            count = int(np.prod(t.shape, dtype=object)) if t.shape else 1
            if count * dtype.itemsize != len(data):
                raise CorruptFileError(f"{file}: tensor {t.name!r} of shape {list(t.shape)} needs "
                                       f"{count * dtype.itemsize} bytes but its buffer holds {len(data)}")
            value = np.frombuffer(data, dtype).reshape(t.shape)
        q = t.quantization
        quantization = None if q is None else Quantization(q.scale, q.zero_point, q.quantized_dimension)
        tensors.append(Tensor(t.name, tuple(t.shape), dtype, quantization, value))
    operators = tuple(Operator(op.opcode, tuple(op.inputs), tuple(op.outputs),
                               None if op.conv_options is None else ConvOptions(**vars(op.conv_options)))
                      for op in sub.operators)
    return IntegerGraph(file, tuple(tensors), tuple(sub.inputs), tuple(sub.outputs), operators, graph.options)


# --- from a version-2 weights file --------------------------------------------------------------

class _Builder:
    def __init__(self, qw: v2.QuantizedWeightsFile):
        self.qw = qw
        self.tensors: list[Tensor] = []
        self.operators: list[Operator] = []
        self.options: list[dict] = []

    def activation(self, name: str, shape) -> int:
        a = self.qw.activations[name]
        q = Quantization(np.array([a.scale], np.float32), np.array([a.zero_point], np.int64))
        self.tensors.append(Tensor(name, tuple(shape), np.dtype(a.dtype), q))
        return len(self.tensors) - 1

    def like(self, name: str, index: int, shape) -> int:
        """A tensor with the quantization of tensor ``index`` (a RESHAPE's output)."""
        t = self.tensors[index]
        self.tensors.append(Tensor(name, tuple(shape), t.dtype, t.quantization))
        return len(self.tensors) - 1

    def constant(self, name: str, value: np.ndarray, quantized: v2.QuantizedTensor | None = None,
                 axis: int = 0) -> int:
        q = None if quantized is None else Quantization(quantized.scale, quantized.zero_point.astype(np.int64), axis)
        value = np.ascontiguousarray(value)
        self.tensors.append(Tensor(name, value.shape, value.dtype, q, value))
        return len(self.tensors) - 1

    def op(self, opcode: int, inputs, output: int, conv_options=None, options=None) -> int:
        self.operators.append(Operator(opcode, tuple(inputs), (output,), conv_options))
        self.options.append(options or {})
        return output

    def conv(self, names: spec.TensorNames, x: int, out_name: str, out_shape, stride: int, depthwise: bool) -> int:
        w, b = self.qw.tensors[names.weights], self.qw.tensors[names.biases]
        # TF-Slim HWIO -> TFLite OHWI; depthwise [kh, kw, C, 1] -> [1, kh, kw, C]: the same transpose.
        w_index = self.constant(names.weights, w.values.transpose(3, 0, 1, 2), w, axis=3 if depthwise else 0)
        b_index = self.constant(names.biases, b.values, b)
        options = ConvOptions(PADDING_SAME, stride, stride, ACTIVATION_CODES[w.fused_activation])
        opcode = tfl.DEPTHWISE_CONV_2D if depthwise else tfl.CONV_2D
        return self.op(opcode, (x, w_index, b_index), self.activation(out_name, out_shape), options)


def from_weights(qw: v2.QuantizedWeightsFile, input_hw: tuple[int, int]) -> IntegerGraph:
    """The integer graph of a version-2 file at one input size (read and checked by
    ``weights_file.read``)."""
    arch, attrs = qw.architecture, qw.attrs
    b = _Builder(qw)
    x = first = b.activation("input", (1, *input_hw, 3))
    block_input = x
    for g in spec.geometry(arch, tuple(input_hw)):
        layer = g.layer
        if layer.block_start:
            block_input = x
        x = b.conv(arch.names(layer), x, layer.scope, (1, *g.out_hw, layer.out_depth), layer.stride,
                   layer.kind == "depthwise")
        if layer.adds_residual:        # TFLite's order: the block's output, then its input
            x = b.op(tfl.ADD, (x, block_input), b.activation(v2.residual_add_name(layer), b.tensors[x].shape),
                     options={"activation": "NONE"})
    last_hw, channels = g.out_hw, arch.num_features
    if attrs["global_pool_op"] == "AVERAGE_POOL_2D":
        x = b.op(tfl.AVERAGE_POOL_2D, (x,), b.activation("global_pool", (1, 1, 1, channels)),
                 options={"padding": PADDING_VALID, "stride_w": 1, "stride_h": 1, "filter_w": last_hw[1],
                          "filter_h": last_hw[0], "activation": "NONE"})
    else:
        keep = bool(attrs.get("global_pool_keep_dims", True))
        axes = b.constant("global_pool/axes", np.array([1, 2], np.int32))
        x = b.op(tfl.MEAN, (x, axes), b.activation("global_pool", (1, 1, 1, channels) if keep else (1, channels)),
                 options={"keep_dims": int(keep)})
    if int(attrs["num_classes"]):
        k = int(attrs["num_classes"])
        names = arch.logits_names
        if attrs["logits_op"] == "CONV_2D":
            x = b.conv(names, x, "Logits", (1, 1, 1, k), 1, False)
            x = b.op(tfl.RESHAPE, (x,), b.like("Logits/reshape", x, (1, k)))
        else:
            w, bias = qw.tensors[names.weights], qw.tensors[names.biases]
            inputs = (x, b.constant(names.weights, w.values[0, 0].T, w), b.constant(names.biases, bias.values, bias))
            x = b.op(tfl.FULLY_CONNECTED, inputs, b.activation("Logits", (1, k)),
                     options={"activation": w.fused_activation, "weights_format": 0, "keep_num_dims": 0})
        if attrs["output_op"] == "SOFTMAX":
            x = b.op(tfl.SOFTMAX, (x,), b.activation("Predictions", (1, k)),
                     options={"beta": float(attrs["softmax_beta"])})
    return IntegerGraph(qw.path, tuple(b.tensors), (first,), (x,), tuple(b.operators), tuple(b.options))
