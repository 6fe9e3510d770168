"""A small, defensive FlatBuffers reader for the parts of the TFLite schema a MobileNet needs.

Model, OperatorCode, SubGraph, Tensor with its quantization, Operator with Conv2D/DepthwiseConv2D
options, Buffer: field numbers are those of tensorflow/lite/schema/schema.fbs.  Every offset and
length is checked against the file size before use, and all byte access goes through one helper
(``_checked_slice``), so a damaged file raises ``CorruptFileError``/``UnsupportedFormatError``
naming the file, and no corrupted length or count can size an allocation (a vector must fit in
the file before it is read).

It deliberately does not: know about MobileNet (``tflite.py`` maps the parsed graph onto TF-Slim
names), import ``tflite``/``flatbuffers``/TensorFlow, or read models whose weights live outside
the flatbuffer (>2 GB form) or sparse tensors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from mobilenet_np.errors import CorruptFileError, UnsupportedFormatError
from mobilenet_np.weights_file import read_regular_file

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


def read_model_bytes(path) -> bytes:
    """The bytes of a .tflite file: a regular file only (a FIFO would block), read whole."""
    return read_regular_file(path, "TFLite file")
