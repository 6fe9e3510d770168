"""Read MobileNet V1/V2 weights out of a TensorFlow Lite (.tflite) file, without TensorFlow.

Two layers:

* a small, defensive FlatBuffers reader for the parts of the TFLite schema we need (Model,
  OperatorCode, SubGraph, Tensor with its quantization, Operator with Conv2D/DepthwiseConv2D
  options, Buffer).  Every offset and length is checked against the file size before use, and
  all byte access goes through one helper (``_checked_slice``), so a damaged file raises
  ``CorruptFileError``/``UnsupportedFormatError`` naming the file, and no corrupted length or
  count can size an allocation (a vector must fit in the file before it is read);
* ``read_tflite``: walks the operators in execution order, recognises the MobileNet V1 or V2
  layer sequence of SPEC.md, and returns each conv's weights and bias under TF-Slim names
  (BatchNorm is folded in TFLite, so every layer is ``weights`` + ``biases``).

It deliberately does not: import ``tflite``/``flatbuffers``/TensorFlow, run the model, read
models whose weights live outside the flatbuffer (>2 GB form), float16 or dynamic-range models
(weights behind DEQUANTIZE ops), sparse tensors, or any network other than the two MobileNets.
Quantized (uint8/int8) weights are dequantized, which is lossless for the stored values but the
original model also quantized its activations; a note says so.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenet_np.errors import (ArchitectureError, CorruptFileError, MissingFileError,
                                 UnsupportedFormatError)
from weights_tools.source import SourceTensors

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

# BuiltinOperator codes (schema.fbs) of the ops a MobileNet .tflite may contain.
ADD, AVERAGE_POOL_2D, CONV_2D, DEPTHWISE_CONV_2D, DEQUANTIZE, MUL = 0, 1, 3, 4, 6, 18
RESHAPE, SOFTMAX, MEAN, SUB, SQUEEZE, QUANTIZE = 22, 25, 40, 41, 43, 114
OP_NAMES = {ADD: "ADD", AVERAGE_POOL_2D: "AVERAGE_POOL_2D", CONV_2D: "CONV_2D",
            DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D", DEQUANTIZE: "DEQUANTIZE", MUL: "MUL",
            RESHAPE: "RESHAPE", SOFTMAX: "SOFTMAX", MEAN: "MEAN", SUB: "SUB", SQUEEZE: "SQUEEZE",
            QUANTIZE: "QUANTIZE"}
# Ops that may follow the backbone (global pool, squeeze, softmax) or wrap a quantized model.
HEAD_OPS = {AVERAGE_POOL_2D, MEAN, RESHAPE, SQUEEZE, SOFTMAX, QUANTIZE, DEQUANTIZE}
# Elementwise ops by a scalar allowed before the first conv (a hub model's x * 2 - 1).
INPUT_OPS = {MUL, SUB, ADD}

# TensorType codes and the NumPy dtypes we decode.
FLOAT32, INT32, UINT8, INT8 = 0, 2, 3, 9
TENSOR_DTYPES = {FLOAT32: np.dtype("<f4"), INT32: np.dtype("<i4"), UINT8: np.dtype("u1"),
                 INT8: np.dtype("i1")}
TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
              6: "bool", 7: "int16", 9: "int8", 10: "float64"}

# BuiltinOptions union tags, Padding and ActivationFunctionType values.
CONV_2D_OPTIONS, DEPTHWISE_CONV_2D_OPTIONS = 1, 2
PADDING_SAME = 0
ACT_NONE, ACT_RELU6 = 0, 3
ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

UINT8_QAT_NOTE = ("dequantized uint8 weights (QAT model): activations were quantized in the "
                  "original; expect small differences")


# --------------------------------------------------------------------------------------------
# Schema records (only the fields we use)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Quantization:
    scale: np.ndarray              # float32, one per tensor or one per channel
    zero_point: np.ndarray         # int64, same length as scale
    quantized_dimension: int


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int
    buffer: int
    quantization: Quantization | None


@dataclass(frozen=True)
class ConvOptions:
    padding: int
    stride_h: int
    stride_w: int
    activation: int
    dilation_h: int
    dilation_w: int


@dataclass(frozen=True)
class Operator:
    opcode: int                    # resolved BuiltinOperator code
    inputs: tuple[int, ...]        # tensor indices, -1 = optional input left out
    outputs: tuple[int, ...]
    conv_options: ConvOptions | None


@dataclass(frozen=True)
class SubGraph:
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class Model:
    version: int
    subgraphs: tuple[SubGraph, ...]
    buffers: tuple[memoryview, ...]   # data of each buffer (empty when the tensor is not constant)


# --------------------------------------------------------------------------------------------
# FlatBuffers access with bounds checks
# --------------------------------------------------------------------------------------------

def _checked_slice(data: bytes, offset: int, length: int, what: str, file: str) -> memoryview:
    """The only place bytes are taken from the file: refuse anything outside [0, len(data))."""
    if offset < 0 or length < 0 or offset + length > len(data):
        raise CorruptFileError(f"{file}: {what} at offset {offset} with length {length} lies "
                               f"outside the file ({len(data)} bytes); the file is damaged or truncated")
    return memoryview(data)[offset:offset + length]


class _Buffer:
    """Little-endian scalar, vector and string reads on the file bytes, all bounds-checked."""

    def __init__(self, data: bytes, file: str):
        self.data = data
        self.file = file

    def corrupt(self, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.file}: {problem}")

    def scalar(self, fmt: str, offset: int, what: str):
        return struct.unpack_from("<" + fmt, _checked_slice(self.data, offset, struct.calcsize(fmt),
                                                            what, self.file))[0]

    def uoffset(self, offset: int, what: str) -> int:
        """Follow a uoffset_t: the target lies that many bytes after the offset field itself."""
        return offset + self.scalar("I", offset, what)

    def vector(self, offset: int, itemsize: int, what: str) -> tuple[int, int]:
        """(start of the elements, element count) of the vector at ``offset``, all in the file."""
        count = self.scalar("I", offset, f"{what} length")
        _checked_slice(self.data, offset + 4, count * itemsize, f"{what} ({count} elements)", self.file)
        return offset + 4, count

    def array(self, offset: int, dtype: np.dtype, what: str) -> np.ndarray:
        start, count = self.vector(offset, dtype.itemsize, what)
        return np.frombuffer(_checked_slice(self.data, start, count * dtype.itemsize, what, self.file),
                             dtype=dtype)

    def string(self, offset: int, what: str) -> str:
        start, count = self.vector(offset, 1, what)
        try:
            return str(_checked_slice(self.data, start, count, what, self.file), "utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"{what} at offset {start} is not valid UTF-8") from None

    def table(self, offset: int, what: str) -> _Table:
        return _Table(self, offset, what)


class _Table:
    """A FlatBuffers table: an soffset to its vtable, then the fields the vtable points at."""

    def __init__(self, buf: _Buffer, pos: int, what: str):
        self.buf, self.pos, self.what = buf, pos, what
        vtable = pos - buf.scalar("i", pos, f"{what} vtable offset")
        self.vtable_size = buf.scalar("H", vtable, f"{what} vtable size")
        self.table_size = buf.scalar("H", vtable + 2, f"{what} table size")
        if self.vtable_size < 4 or self.vtable_size % 2:
            raise buf.corrupt(f"{what} at offset {pos} has a bad vtable size {self.vtable_size}")
        _checked_slice(buf.data, vtable, self.vtable_size, f"{what} vtable", buf.file)
        _checked_slice(buf.data, pos, self.table_size, what, buf.file)
        self.vtable = vtable

    def _field(self, index: int, size: int) -> int | None:
        """Absolute position of field ``index`` (``size`` bytes wide), or None when absent."""
        entry = 4 + 2 * index
        if entry >= self.vtable_size:
            return None
        rel = self.buf.scalar("H", self.vtable + entry, f"{self.what} field {index}")
        if rel == 0:
            return None
        if rel + size > self.table_size:
            raise self.buf.corrupt(f"{self.what} at offset {self.pos}: field {index} lies outside its "
                                   f"table ({rel}+{size} > {self.table_size} bytes)")
        return self.pos + rel

    def scalar(self, index: int, fmt: str, default):
        at = self._field(index, struct.calcsize(fmt))
        return default if at is None else self.buf.scalar(fmt, at, f"{self.what} field {index}")

    def target(self, index: int) -> int | None:
        """Where the offset field ``index`` points (a table, vector or string), or None."""
        at = self._field(index, 4)
        return None if at is None else self.buf.uoffset(at, f"{self.what} field {index}")

    def table(self, index: int, what: str) -> _Table | None:
        at = self.target(index)
        return None if at is None else self.buf.table(at, what)

    def array(self, index: int, dtype: str, what: str) -> np.ndarray:
        at = self.target(index)
        return np.zeros(0, dtype) if at is None else self.buf.array(at, np.dtype(dtype), what)

    def string(self, index: int, what: str) -> str:
        at = self.target(index)
        return "" if at is None else self.buf.string(at, what)

    def tables(self, index: int, what: str) -> list[_Table]:
        at = self.target(index)
        if at is None:
            return []
        start, count = self.buf.vector(at, 4, what)
        return [self.buf.table(self.buf.uoffset(start + 4 * i, f"{what}[{i}]"), f"{what}[{i}]")
                for i in range(count)]


# --------------------------------------------------------------------------------------------
# Schema parsing (field numbers are those of tensorflow/lite/schema/schema.fbs)
# --------------------------------------------------------------------------------------------

def _parse_quantization(table: _Table | None, what: str) -> Quantization | None:
    if table is None:
        return None
    scale = table.array(2, "<f4", f"{what} scale")
    zero_point = table.array(3, "<i8", f"{what} zero_point")
    if len(scale) == 0:                      # min/max-only or empty quantization: not quantized
        return None
    if len(zero_point) != len(scale):
        raise table.buf.corrupt(f"{what} has {len(scale)} scales but {len(zero_point)} zero points")
    return Quantization(scale.copy(), zero_point.copy(), table.scalar(6, "i", 0))


def _parse_tensor(table: _Table, index: int) -> Tensor:
    what = f"tensor {index}"
    if table.target(6) is not None:          # field 6: sparsity
        raise UnsupportedFormatError(f"{table.buf.file}: {what} is sparse; sparse tensors are not supported")
    return Tensor(name=table.string(3, f"{what} name"),
                  shape=tuple(int(d) for d in table.array(0, "<i4", f"{what} shape")),
                  type=table.scalar(1, "b", FLOAT32),
                  buffer=table.scalar(2, "I", 0),
                  quantization=_parse_quantization(table.table(4, f"{what} quantization"), what))


def _parse_conv_options(table: _Table | None, depthwise: bool) -> ConvOptions | None:
    if table is None:
        return None
    # DepthwiseConv2DOptions has depth_multiplier at field 3, which shifts the later fields by one.
    shift = 1 if depthwise else 0
    return ConvOptions(padding=table.scalar(0, "b", 0), stride_w=table.scalar(1, "i", 0),
                       stride_h=table.scalar(2, "i", 0), activation=table.scalar(3 + shift, "b", 0),
                       dilation_w=table.scalar(4 + shift, "i", 1), dilation_h=table.scalar(5 + shift, "i", 1))


def _parse_operator(table: _Table, index: int, opcodes: list[int]) -> Operator:
    what = f"operator {index}"
    opcode_index = table.scalar(0, "I", 0)
    if opcode_index >= len(opcodes):
        raise table.buf.corrupt(f"{what} uses operator code {opcode_index}, but the model has {len(opcodes)}")
    options_type = table.scalar(3, "B", 0)
    conv_options = None
    if options_type in (CONV_2D_OPTIONS, DEPTHWISE_CONV_2D_OPTIONS):
        conv_options = _parse_conv_options(table.table(4, f"{what} options"),
                                           depthwise=options_type == DEPTHWISE_CONV_2D_OPTIONS)
    return Operator(opcode=opcodes[opcode_index],
                    inputs=tuple(int(i) for i in table.array(1, "<i4", f"{what} inputs")),
                    outputs=tuple(int(i) for i in table.array(2, "<i4", f"{what} outputs")),
                    conv_options=conv_options)


def _parse_subgraph(table: _Table, index: int, opcodes: list[int], n_buffers: int) -> SubGraph:
    what = f"subgraph {index}"
    tensors = tuple(_parse_tensor(t, i) for i, t in enumerate(table.tables(0, f"{what} tensors")))
    operators = tuple(_parse_operator(t, i, opcodes) for i, t in enumerate(table.tables(3, f"{what} operators")))
    inputs = tuple(int(i) for i in table.array(1, "<i4", f"{what} inputs"))
    outputs = tuple(int(i) for i in table.array(2, "<i4", f"{what} outputs"))
    for where, indices in [("inputs", inputs), ("outputs", outputs)] + [
            (f"operator {k}", op.inputs + op.outputs) for k, op in enumerate(operators)]:
        bad = [i for i in indices if not -1 <= i < len(tensors)]
        if bad:
            raise table.buf.corrupt(f"{what} {where} refer to tensor(s) {bad}, but there are {len(tensors)}")
    bad_buffers = [t.name for t in tensors if t.buffer >= n_buffers]
    if bad_buffers:
        raise table.buf.corrupt(f"{what}: tensor(s) {bad_buffers[:3]} refer to a buffer beyond the "
                                f"{n_buffers} the model has")
    return SubGraph(tensors, inputs, outputs, operators)


def _parse_buffer(table: _Table, index: int) -> memoryview:
    # Buffer.offset/size (fields 1, 2) hold data stored after the flatbuffer in >2 GB models.
    if table.scalar(1, "Q", 0) > 1:
        raise UnsupportedFormatError(f"{table.buf.file}: buffer {index} is stored outside the flatbuffer "
                                     "(the >2 GB model layout), which is not supported")
    at = table.target(0)
    if at is None:
        return memoryview(b"")
    start, count = table.buf.vector(at, 1, f"buffer {index} data")
    return _checked_slice(table.buf.data, start, count, f"buffer {index} data", table.buf.file)


def parse_model(data: bytes, file: str) -> Model:
    """Parse the TFLite flatbuffer ``data`` (the bytes of ``file``, named in errors)."""
    if len(data) < 8:
        raise CorruptFileError(f"{file}: only {len(data)} bytes; too short for a TFLite file")
    if bytes(data[4:8]) != FILE_IDENTIFIER:
        raise UnsupportedFormatError(f"{file}: not a TFLite file (file identifier "
                                     f"{bytes(data[4:8])!r}, expected {FILE_IDENTIFIER!r})")
    buf = _Buffer(data, file)
    root = buf.table(buf.uoffset(0, "root table offset"), "model")
    version = root.scalar(0, "I", 0)
    if version != SCHEMA_VERSION:
        raise UnsupportedFormatError(f"{file}: TFLite schema version {version}; only version "
                                     f"{SCHEMA_VERSION} is supported")
    opcodes = []
    for code in root.tables(1, "operator code"):
        # builtin_code (field 3, int32) superseded the byte deprecated_builtin_code (field 0) once
        # codes passed 127; writers fill one or both, and the larger one is the real code.
        opcodes.append(max(code.scalar(3, "i", 0), code.scalar(0, "b", 0)))
    buffers = tuple(_parse_buffer(t, i) for i, t in enumerate(root.tables(4, "buffer")))
    subgraphs = tuple(_parse_subgraph(t, i, opcodes, len(buffers))
                      for i, t in enumerate(root.tables(2, "subgraph")))
    return Model(version, subgraphs, buffers)


# --------------------------------------------------------------------------------------------
# MobileNet layer sequences (SPEC.md §3.2, §4.2)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layer:
    scope: str          # TF-Slim scope without the MobilenetV1/ or MobilenetV2/ prefix
    depthwise: bool
    stride: int
    relu6: bool         # False for the linear V2 projections and for the logits


V1_DEPTHWISE_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
V2_DEPTHWISE_STRIDES = (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)   # expanded_conv, _1 .. _16
LOGITS = _Layer("Logits/Conv2d_1c_1x1", False, 1, False)


def _v1_layers() -> list[_Layer]:
    layers = [_Layer("Conv2d_0", False, 2, True)]
    for i, stride in enumerate(V1_DEPTHWISE_STRIDES, start=1):
        layers += [_Layer(f"Conv2d_{i}_depthwise", True, stride, True),
                   _Layer(f"Conv2d_{i}_pointwise", False, 1, True)]
    return layers


def _v2_layers() -> list[_Layer]:
    layers = [_Layer("Conv", False, 2, True)]
    for k, stride in enumerate(V2_DEPTHWISE_STRIDES):
        block = "expanded_conv" if k == 0 else f"expanded_conv_{k}"
        if k > 0:                                    # the first block has no expand conv
            layers.append(_Layer(f"{block}/expand", False, 1, True))
        layers += [_Layer(f"{block}/depthwise", True, stride, True),
                   _Layer(f"{block}/project", False, 1, False)]
    return layers + [_Layer("Conv_1", False, 1, True)]


ARCHITECTURES = {"MobilenetV1": _v1_layers(), "MobilenetV2": _v2_layers()}


def _pattern(layers: list[_Layer]) -> str:
    return "".join("D" if layer.depthwise else "C" for layer in layers)


# --------------------------------------------------------------------------------------------
# Tensor decoding
# --------------------------------------------------------------------------------------------

def _constant(model: Model, tensor: Tensor, file: str) -> np.ndarray:
    """The stored value of a constant tensor, as its raw dtype and shape."""
    dtype = TENSOR_DTYPES.get(tensor.type)
    if dtype is None:
        raise UnsupportedFormatError(f"{file}: tensor {tensor.name!r} has type "
                                     f"{TYPE_NAMES.get(tensor.type, tensor.type)}; only float32, "
                                     "uint8, int8 weights and int32 biases are supported")
    data = model.buffers[tensor.buffer]
    if len(data) == 0:
        raise UnsupportedFormatError(f"{file}: tensor {tensor.name!r} is not a constant (no data); "
                                     "weights computed at run time (e.g. DEQUANTIZE) are not supported")
    if any(d < 0 for d in tensor.shape):
        raise CorruptFileError(f"{file}: tensor {tensor.name!r} has a negative dimension {tensor.shape}")
    count = int(np.prod(tensor.shape, dtype=object)) if tensor.shape else 1
    if count * dtype.itemsize != len(data):
        raise CorruptFileError(f"{file}: tensor {tensor.name!r} of shape {list(tensor.shape)} needs "
                               f"{count * dtype.itemsize} bytes but its buffer holds {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(tensor.shape)


def _dequantize(raw: np.ndarray, tensor: Tensor, file: str) -> np.ndarray:
    """real = scale * (q - zero_point), per tensor or per channel; float32 passes through."""
    if raw.dtype == np.float32:
        return raw.copy()
    q = tensor.quantization
    if q is None:
        raise UnsupportedFormatError(f"{file}: {raw.dtype} tensor {tensor.name!r} has no quantization "
                                     "parameters")
    scale = q.scale.astype(np.float64)
    zero_point = q.zero_point.astype(np.float64)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise CorruptFileError(f"{file}: tensor {tensor.name!r} has a non-positive or non-finite scale")
    if len(scale) > 1:                                # per-channel along quantized_dimension
        axis = q.quantized_dimension
        if not 0 <= axis < raw.ndim or raw.shape[axis] != len(scale):
            raise CorruptFileError(f"{file}: tensor {tensor.name!r} of shape {list(raw.shape)} has "
                                   f"{len(scale)} scales along dimension {axis}")
        shape = [1] * raw.ndim
        shape[axis] = len(scale)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    # (q - zp) and the product are exact in float64; the one rounding is the cast to float32.
    return (scale * (raw.astype(np.float64) - zero_point)).astype(np.float32)


def _informative_parts(name: str) -> list[str]:
    """The parts of a (possibly ';'-joined, MLIR-style) tensor name that mention a MobileNet."""
    return [part for part in name.split(";") if "Mobilenet" in part]


def _check_name(name: str, net: str, scope: str, file: str, what: str) -> None:
    """If the tensor name mentions a MobileNet, it must mention this layer's scope."""
    parts = _informative_parts(name)
    scope_re = re.compile(rf"(^|/){re.escape(scope)}(/|$)")
    if parts and not any(net in part and scope_re.search(part) for part in parts):
        raise ArchitectureError(f"{file}: {what} is named {name!r}, but the op sequence puts "
                                f"{net}/{scope} here")


def _activation(sub: SubGraph, op: Operator) -> str:
    """"relu6" when fused into the op, "relu6 (uint8 range)" when an older uint8 model leaves
    it out because the output's quantized range is exactly [0, 6], else the fused function."""
    if op.conv_options.activation == ACT_RELU6:
        return "relu6"
    out = sub.tensors[op.outputs[0]]
    if op.conv_options.activation == ACT_NONE and out.type == UINT8 and out.quantization is not None:
        scale, zero_point = float(out.quantization.scale[0]), int(out.quantization.zero_point[0])
        if zero_point == 0 and abs(scale * 255 - 6.0) < 1e-3:
            return "relu6 (uint8 range)"
    return ACTIVATION_NAMES.get(op.conv_options.activation, str(op.conv_options.activation))


def _convert_layer(model: Model, sub: SubGraph, op: Operator, layer: _Layer, net: str,
                   file: str, index: int, seen: set[str]) -> dict[str, np.ndarray]:
    """TF-Slim tensors of one conv op; adds the kernel dtype and activation kind to ``seen``."""
    what = f"operator {index} ({OP_NAMES[op.opcode]}, {net}/{layer.scope})"
    if len(op.inputs) < 3 or min(op.inputs[1:3]) < 0 or not op.outputs or op.outputs[0] < 0:
        raise ArchitectureError(f"{file}: {what} lacks its weights or bias input")
    if op.conv_options is None:
        raise CorruptFileError(f"{file}: {what} has no convolution options")
    opts = op.conv_options
    kernel = sub.tensors[op.inputs[1]]
    bias = sub.tensors[op.inputs[2]]
    _check_name(kernel.name, net, layer.scope, file, f"{what} weights")
    _check_name(bias.name, net, layer.scope, file, f"{what} bias")
    raw_kernel = _constant(model, kernel, file)
    raw_bias = _constant(model, bias, file)
    if raw_kernel.dtype.name not in ("float32", "uint8", "int8") or raw_bias.dtype.name not in ("float32", "int32"):
        raise UnsupportedFormatError(f"{file}: {what} has {raw_kernel.dtype} weights and a {raw_bias.dtype} bias; "
                                     "supported: float32/uint8/int8 weights, float32/int32 biases")
    seen.add(raw_kernel.dtype.name)
    weights = _dequantize(raw_kernel, kernel, file)
    if raw_bias.dtype == np.int32 and bias.quantization is not None and np.any(bias.quantization.zero_point):
        raise UnsupportedFormatError(f"{file}: int32 bias {bias.name!r} has a non-zero zero point")
    biases = _dequantize(raw_bias, bias, file)            # int32 bias: real = bias_scale * q

    if weights.ndim != 4 or biases.ndim != 1:
        raise ArchitectureError(f"{file}: {what} has weights {list(weights.shape)} and bias "
                                f"{list(biases.shape)}; expected a 4-D kernel and a 1-D bias")
    kh, kw = weights.shape[1:3]
    if (opts.stride_h, opts.stride_w) != (layer.stride, layer.stride) or (opts.dilation_h, opts.dilation_w) != (1, 1):
        raise ArchitectureError(f"{file}: {what} has stride {(opts.stride_h, opts.stride_w)} and dilation "
                                f"{(opts.dilation_h, opts.dilation_w)}; SPEC.md has stride {layer.stride}, dilation 1")
    # TFLite writes SAME as SAME; VALID only equals it for 1x1 kernels at stride 1.
    if opts.padding != PADDING_SAME and (kh, kw, layer.stride) != (1, 1, 1):
        raise ArchitectureError(f"{file}: {what} uses VALID padding on a {kh}x{kw} kernel; MobileNet uses SAME")
    activation = _activation(sub, op)
    if activation.startswith("relu6") != layer.relu6:
        raise ArchitectureError(f"{file}: {what} has activation {activation}; "
                                f"expected {'RELU6' if layer.relu6 else 'NONE'}")
    seen.add(activation)
    if layer.depthwise:
        channels_in = sub.tensors[op.inputs[0]].shape[-1:] if op.inputs[0] >= 0 else ()
        if weights.shape[0] != 1 or channels_in != (weights.shape[3],):
            raise ArchitectureError(f"{file}: {what} depthwise kernel {list(weights.shape)} is not "
                                    f"[1, kh, kw, C] with C = input channels {list(channels_in)}")
    # TFLite keeps the output channel first in all three layouts; moving it last gives TF-Slim's:
    #   conv OHWI [O, kh, kw, I] -> HWIO [kh, kw, I, O]
    #   depthwise [1, kh, kw, C] -> [kh, kw, C, 1] (channel multiplier 1 last)
    #   logits    [K, 1, 1, C]   -> [1, 1, C, K]
    scope = f"{net}/{layer.scope}"
    variable = "depthwise_weights" if layer.depthwise else "weights"
    tensors = {f"{scope}/{variable}": np.ascontiguousarray(weights.transpose(1, 2, 3, 0))}
    out_channels = weights.shape[3] if layer.depthwise else weights.shape[0]
    if biases.shape != (out_channels,):
        raise ArchitectureError(f"{file}: {what} bias has shape {list(biases.shape)}, expected [{out_channels}]")
    tensors[f"{scope}/biases"] = biases
    return tensors


def _walk_operators(sub: SubGraph, file: str) -> tuple[list, list, int | None, int]:
    """Sort the operators, in execution order, into (input preprocessing ops, conv ops, the
    number of convs before the global pool or None, the number of residual ADDs)."""
    input_ops, convs, head_start, n_add = [], [], None, 0
    for index, op in enumerate(sub.operators):
        if op.opcode in (CONV_2D, DEPTHWISE_CONV_2D):
            convs.append((index, op))
            if head_start is not None and (op.opcode == DEPTHWISE_CONV_2D or len(convs) - head_start > 1):
                raise ArchitectureError(f"{file}: unexpected {OP_NAMES[op.opcode]} (operator {index}) "
                                        "after the global pool; only one logits conv may follow it")
        elif op.opcode in INPUT_OPS and not convs:
            input_ops.append((index, op))
        elif op.opcode == ADD:
            n_add += 1
        elif op.opcode in (AVERAGE_POOL_2D, MEAN) and head_start is None:
            head_start = len(convs)
        elif op.opcode not in HEAD_OPS:
            raise ArchitectureError(f"{file}: operator {index} is "
                                    f"{OP_NAMES.get(op.opcode, f'builtin code {op.opcode}')}, "
                                    "which no MobileNet of SPEC.md contains")
    return input_ops, convs, head_start, n_add


def _input_preprocessing(model: Model, sub: SubGraph, input_ops, file: str) -> list[str]:
    """The elementwise ops by a float scalar applied before the first conv, e.g. ['MUL 2.0',
    'SUB 1.0'] for a hub model's x * 2 - 1."""
    steps = []
    for index, op in input_ops:
        constants = [sub.tensors[i] for i in op.inputs if i >= 0 and len(model.buffers[sub.tensors[i].buffer])]
        if len(constants) != 1 or constants[0].type != FLOAT32 or _constant(model, constants[0], file).size != 1:
            raise ArchitectureError(f"{file}: operator {index} ({OP_NAMES[op.opcode]}) before the first "
                                    "conv is not an elementwise op by a float scalar")
        steps.append(f"{OP_NAMES[op.opcode]} {float(_constant(model, constants[0], file).reshape(-1)[0])!r}")
    return steps


def _quantization_note(tensor: Tensor, role: str, file: str) -> str | None:
    q = tensor.quantization
    if q is None or tensor.type not in (UINT8, INT8):
        return None
    scale, zero_point = float(q.scale[0]), int(q.zero_point[0])
    if not scale > 0:
        raise CorruptFileError(f"{file}: model {role} {tensor.name!r} has the scale {scale}")
    return (f"model {role} {tensor.name!r} is {TYPE_NAMES[tensor.type]} with scale {scale!r} "
            f"(1/{1 / scale:.6g}) and zero point {zero_point}: real = scale * (q - zero_point)")


def read_tflite(path: str | Path) -> SourceTensors:
    """Import a MobileNet V1/V2 .tflite: every conv's (dequantized) weights and folded bias."""
    path = Path(path)
    file = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{file}: no such file") from None
    model = parse_model(data, file)
    if len(model.subgraphs) != 1:
        raise UnsupportedFormatError(f"{file}: {len(model.subgraphs)} subgraphs; a MobileNet has exactly one")
    sub = model.subgraphs[0]

    input_ops, convs, head_start, n_add = _walk_operators(sub, file)
    backbone = convs if head_start is None else convs[:head_start]
    found = "".join("D" if op.opcode == DEPTHWISE_CONV_2D else "C" for _, op in backbone)
    nets = [net for net, layers in ARCHITECTURES.items() if _pattern(layers) == found]
    if not nets:
        raise ArchitectureError(f"{file}: the conv sequence (C = conv, D = depthwise) {found!r} is neither "
                                f"MobileNet V1 ({_pattern(ARCHITECTURES['MobilenetV1'])!r}) nor V2")
    net = nets[0]
    if (net == "MobilenetV1") != (n_add == 0):        # V2 has residual ADDs, V1 has none
        raise ArchitectureError(f"{file}: {net} op sequence with {n_add} ADD ops")
    layers = ARCHITECTURES[net] + ([LOGITS] if len(convs) > len(backbone) else [])

    tensors: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    used = set()
    for (index, op), layer in zip(convs, layers, strict=True):
        tensors.update(_convert_layer(model, sub, op, layer, net, file, index, seen))
        used.update(op.inputs[1:3])

    notes = [f"{net} recognised from the op sequence ({len(backbone)} backbone convs, "
             f"{n_add} residual ADDs, {'with' if len(layers) > len(backbone) else 'without'} logits)"]
    if "uint8" in seen:
        notes.append(UINT8_QAT_NOTE)
    if "relu6 (uint8 range)" in seen:
        notes.append("ReLU6 is not fused into the uint8 convs; it is implied by their output "
                     "quantization range [0, 6] (scale 6/255, zero point 0)")
    if "int8" in seen:
        notes.append("dequantized int8 weights: activations were quantized in the original; "
                     "expect small differences")
    preprocessing = _input_preprocessing(model, sub, input_ops, file)
    if preprocessing:
        notes.append(f"the graph scales its input before the first conv ({', '.join(preprocessing)}); "
                     "it takes what the original module takes")
    for role, indices in (("input", sub.inputs), ("output", sub.outputs)):
        for i in indices:
            note = _quantization_note(sub.tensors[i], role, file)
            if note:
                notes.append(note)
    ignored = {t.name: "constant operand of a non-conv op (input scaling, reshape shape), not a weight"
               for i, t in enumerate(sub.tensors) if i not in used and len(model.buffers[t.buffer])}
    shape = sub.tensors[sub.inputs[0]].shape if sub.inputs else ()
    input_size = (int(shape[1]), int(shape[2])) if len(shape) == 4 and min(shape[1:3]) > 0 else None
    return SourceTensors(tensors=tensors, source_format="tflite", source_files=[file],
                         batchnorm_folded=True, ignored=ignored, notes=notes, input_size=input_size)
