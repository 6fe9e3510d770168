"""Read MobileNet V1/V2 weights out of a TensorFlow Lite (.tflite) file, without TensorFlow.

``read_tflite`` parses the flatbuffer (``tflite_schema.py``, bounds-checked), walks the
operators in execution order, recognises the MobileNet V1 or V2 layer sequence of
``mobilenet_np.spec`` (kinds, strides, activations: the architecture layer is the one source)
and returns each conv's weights and bias under TF-Slim names (BatchNorm is folded in TFLite, so
every layer is ``weights`` + ``biases``).

It deliberately does not: run the model, read float16 or dynamic-range models (weights behind
DEQUANTIZE ops), or any network other than the two MobileNets.  Quantized (uint8/int8) weights
are dequantized, which is lossless for the stored values but the original model also quantized
its activations; a note says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mobilenet_np import spec
from mobilenet_np.errors import ArchitectureError, CorruptFileError, UnsupportedFormatError
from weights_tools.source import SourceTensors
from weights_tools.tflite_schema import (ACT_NONE, ACT_RELU6, ACTIVATION_NAMES, ADD, AVERAGE_POOL_2D,
                                         CONV_2D, DEPTHWISE_CONV_2D, FLOAT32, HEAD_OPS, INPUT_OPS, INT8,
                                         MEAN, OP_NAMES, PADDING_SAME, TENSOR_DTYPES, TYPE_NAMES, UINT8,
                                         Model, Operator, SubGraph, Tensor, parse_model, read_model_bytes)

UINT8_QAT_NOTE = ("dequantized uint8 weights (QAT model): activations were quantized in the "
                  "original; expect small differences")

# The layer sequences come from the architecture layer: scopes, kinds, strides and activations
# do not depend on the depth multiplier, so width 1.0 stands for all.  The classifier is a
# linear 1x1 conv after the global pool.
ARCHITECTURES = {spec.SCOPES[name]: spec.build(name, 1.0) for name in spec.ARCHITECTURES}
LOGITS = spec.ConvLayer(spec.LOGITS_SCOPE, "pointwise", 1, 1, 0, 0, relu6=False)


def _pattern(layers) -> str:
    return "".join("D" if layer.kind == "depthwise" else "C" for layer in layers)


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


def _convert_layer(model: Model, sub: SubGraph, op: Operator, layer: spec.ConvLayer, net: str,
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
    if layer.kind == "depthwise":
        channels_in = sub.tensors[op.inputs[0]].shape[-1:] if op.inputs[0] >= 0 else ()
        if weights.shape[0] != 1 or channels_in != (weights.shape[3],):
            raise ArchitectureError(f"{file}: {what} depthwise kernel {list(weights.shape)} is not "
                                    f"[1, kh, kw, C] with C = input channels {list(channels_in)}")
    # TFLite keeps the output channel first in all three layouts; moving it last gives TF-Slim's:
    #   conv OHWI [O, kh, kw, I] -> HWIO [kh, kw, I, O]
    #   depthwise [1, kh, kw, C] -> [kh, kw, C, 1] (channel multiplier 1 last)
    #   logits    [K, 1, 1, C]   -> [1, 1, C, K]
    names = spec.tensor_names(net, layer.scope, layer.weight_name)
    tensors = {names.weights: np.ascontiguousarray(weights.transpose(1, 2, 3, 0))}
    out_channels = weights.shape[3] if layer.kind == "depthwise" else weights.shape[0]
    if biases.shape != (out_channels,):
        raise ArchitectureError(f"{file}: {what} bias has shape {list(biases.shape)}, expected [{out_channels}]")
    tensors[names.biases] = biases
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
    model = parse_model(read_model_bytes(path), file)
    if len(model.subgraphs) != 1:
        raise UnsupportedFormatError(f"{file}: {len(model.subgraphs)} subgraphs; a MobileNet has exactly one")
    sub = model.subgraphs[0]

    input_ops, convs, head_start, n_add = _walk_operators(sub, file)
    backbone = convs if head_start is None else convs[:head_start]
    found = "".join("D" if op.opcode == DEPTHWISE_CONV_2D else "C" for _, op in backbone)
    nets = [net for net, arch in ARCHITECTURES.items() if _pattern(arch.layers) == found]
    if not nets:
        raise ArchitectureError(f"{file}: the conv sequence (C = conv, D = depthwise) {found!r} is neither "
                                f"MobileNet V1 ({_pattern(ARCHITECTURES['MobilenetV1'].layers)!r}) nor V2")
    net = nets[0]
    if (net == "MobilenetV1") != (n_add == 0):        # V2 has residual ADDs, V1 has none
        raise ArchitectureError(f"{file}: {net} op sequence with {n_add} ADD ops")
    layers = list(ARCHITECTURES[net].layers) + ([LOGITS] if len(convs) > len(backbone) else [])

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
