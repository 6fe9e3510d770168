"""A quantized MobileNet .tflite kept quantized: the integers and quantization of a version-2 file.

``read_quantized_tflite(path, float_source)`` walks the same operators ``tflite.read_tflite``
recognised (its dequantized ``SourceTensors`` say which network it is) and returns, under
TF-Slim names, each conv's integer kernel (moved to the TF-Slim layout; the integers are
unchanged) and int32 bias with their scales, zero points and fused activation, and every
activation tensor's quantization by the names of ``weights_file_v2.activation_names``, plus
the root attributes version 2 adds (``quantization``, ``global_pool_op``, ...).

It refuses, naming the operator, any graph whose op sequence the version-2 builder
(``forward/integer_graph.from_weights``) would not reproduce: quantized input scaling before
the first conv, QUANTIZE/DEQUANTIZE in the graph, residual ADDs that are not V2's, a global pool
that is not the whole map.  ``--dequantize`` reads such files as float.
"""

from __future__ import annotations

import numpy as np

from mobilenet_np import spec
from mobilenet_np import weights_file_v2 as v2
from mobilenet_np.errors import ArchitectureError, UnsupportedFormatError
from weights_tools import tflite_ops as tfl
from weights_tools.tflite_schema import INT8, INT32, PADDING_SAME, TENSOR_DTYPES, UINT8, read_model_bytes

HINT = "convert with --dequantize for a float file"


def is_quantized(path) -> bool:
    """Whether a parsed-valid .tflite has uint8/int8 conv kernels (a quantized model)."""
    model = tfl.parse_model(read_model_bytes(path), str(path))
    sub = model.subgraphs[0]
    return any(op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D) and len(op.inputs) > 1
               and sub.tensors[op.inputs[1]].type in (UINT8, INT8) for op in sub.operators)


def _params(tensor, file: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    q = tensor.quantization
    if q is None or len(q.scale) == 0:
        raise UnsupportedFormatError(f"{file}: {what} ({tensor.name!r}) has no quantization parameters")
    return np.asarray(q.scale, np.float32), np.asarray(q.zero_point)


def _activation(sub, index: int, file: str, what: str) -> v2.ActivationQuantization:
    t = sub.tensors[index]
    scale, zero_point = _params(t, file, what)
    if t.type not in (UINT8, INT8) or len(scale) != 1:
        raise UnsupportedFormatError(f"{file}: {what} ({t.name!r}) is not a per-tensor uint8/int8 tensor")
    return v2.ActivationQuantization(float(scale[0]), int(zero_point[0]), TENSOR_DTYPES[t.type].name)


def _constant(model, tensor) -> np.ndarray:
    data = model.buffers[tensor.buffer]
    return np.frombuffer(data, TENSOR_DTYPES[tensor.type]).reshape(tensor.shape).copy()


def _conv_tensors(model, sub, op, names: spec.TensorNames, depthwise: bool, file: str, what: str) -> dict:
    kernel, bias = sub.tensors[op.inputs[1]], sub.tensors[op.inputs[2]]
    w = _constant(model, kernel)
    scale, zero_point = _params(kernel, file, f"{what} weights")
    activation = tfl.ACTIVATION_NAMES.get(op.conv_options.activation, str(op.conv_options.activation))
    if activation not in v2.FUSED_ACTIVATIONS:
        raise UnsupportedFormatError(f"{file}: {what} has the fused activation {activation}")
    # TFLite's output channel first -> TF-Slim's last (conv OHWI -> HWIO, depthwise [1,kh,kw,C] -> [kh,kw,C,1]).
    weights = v2.QuantizedTensor(np.ascontiguousarray(w.transpose(1, 2, 3, 0)), scale, zero_point,
                                 2 if depthwise else 3, activation)
    b_scale, b_zero_point = _params(bias, file, f"{what} bias")
    return {names.weights: weights, names.biases: v2.QuantizedTensor(_constant(model, bias), b_scale, b_zero_point, 0)}


def read_quantized_tflite(path, architecture: str, depth_multiplier: float) -> tuple[dict, dict, dict]:
    """(tensors, activations, the root attributes version 2 adds) of a quantized MobileNet .tflite
    whose network ``tflite.read_tflite`` + ``recognise.detect`` found to be ``architecture``."""
    file = str(path)
    graph = tfl.read_graph(read_model_bytes(path), file)
    model, sub = graph.model, graph.model.subgraphs[0]
    arch = spec.build(architecture, depth_multiplier)
    if len(sub.inputs) != 1 or not 0 <= sub.inputs[0] < len(sub.tensors):
        raise UnsupportedFormatError(f"{file}: the graph has {len(sub.inputs)} inputs; expected one ({HINT})")
    layers = list(arch.layers)
    tensors, activations, extra = {}, {"input": _activation(sub, sub.inputs[0], file, "the input")}, {}
    dtypes = {TENSOR_DTYPES[sub.tensors[sub.inputs[0]].type].name}
    current, block_input, last_layer = sub.inputs[0], sub.inputs[0], None
    stage = "backbone"

    def refuse(index, op, why):
        name = tfl.OP_NAMES.get(op.opcode, f"builtin code {op.opcode}")
        return UnsupportedFormatError(f"{file}: operator {index} ({name}) {why}; a version-2 file cannot "
                                      f"hold this graph ({HINT})")

    for index, op in enumerate(sub.operators):
        if current not in op.inputs[:1]:
            raise refuse(index, op, "does not take the previous operator's output")
        if len(op.outputs) != 1 or op.outputs[0] < 0:
            raise refuse(index, op, "does not have one output")
        if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D) and stage == "backbone" and layers:
            layer = layers.pop(0)
            if layer.block_start:
                block_input = current
            opts = op.conv_options
            if opts.padding != PADDING_SAME and (layer.kernel, layer.stride) != (1, 1):
                raise refuse(index, op, "has VALID padding")
            tensors.update(_conv_tensors(model, sub, op, arch.names(layer), layer.kind == "depthwise", file,
                                         f"operator {index} ({layer.scope})"))
            dtypes.add(tensors[arch.names(layer).weights].values.dtype.name)
            activations[layer.scope] = _activation(sub, op.outputs[0], file, layer.scope)
            last_layer = layer
        elif op.opcode == tfl.ADD and stage == "backbone" and last_layer is not None and last_layer.adds_residual:
            if tuple(op.inputs) != (current, block_input) or graph.options[index]["activation"] != "NONE":
                raise refuse(index, op, "is not the residual add of the block's output and input")
            activations[v2.residual_add_name(last_layer)] = _activation(sub, op.outputs[0], file, "a residual add")
            last_layer = None
        elif op.opcode in (tfl.AVERAGE_POOL_2D, tfl.MEAN) and stage == "backbone" and not layers:
            options = graph.options[index]
            hw = sub.tensors[current].shape[1:3]
            if op.opcode == tfl.AVERAGE_POOL_2D:
                if (options["filter_h"], options["filter_w"]) != tuple(hw) or options["padding"] == PADDING_SAME \
                        or options["activation"] != "NONE":
                    raise refuse(index, op, "is not a global average pool (window = the whole map, VALID)")
            else:
                axes = sub.tensors[op.inputs[1]] if len(op.inputs) == 2 and op.inputs[1] >= 0 else None
                if axes is None or axes.type != INT32 or len(model.buffers[axes.buffer]) != 8 \
                        or sorted(int(a) % 4 for a in np.frombuffer(model.buffers[axes.buffer], np.int32)) != [1, 2]:
                    raise refuse(index, op, "is not a mean over height and width")
                extra["global_pool_keep_dims"] = bool(options["keep_dims"])
            extra["global_pool_op"] = tfl.OP_NAMES[op.opcode]
            activations["global_pool"] = _activation(sub, op.outputs[0], file, "the global pool")
            stage = "pooled"
        elif op.opcode == tfl.CONV_2D and stage == "pooled":
            tensors.update(_conv_tensors(model, sub, op, arch.logits_names, False, file, f"operator {index} (logits)"))
            activations["Logits"] = _activation(sub, op.outputs[0], file, "the logits")
            extra["logits_op"] = "CONV_2D"
            stage = "logits"
        elif op.opcode in (tfl.RESHAPE, tfl.SQUEEZE) and stage == "logits":
            out, src = sub.tensors[op.outputs[0]], sub.tensors[current]
            if len(out.shape) != 2 or _activation(sub, op.outputs[0], file, "reshape") != activations["Logits"] \
                    or out.type != src.type:
                raise refuse(index, op, "is not the logits' reshape to [N, classes] keeping their quantization")
            stage = "squeezed"
        elif op.opcode == tfl.SOFTMAX and stage == "squeezed":
            activations["Predictions"] = _activation(sub, op.outputs[0], file, "the predictions")
            extra.update(output_op="SOFTMAX", softmax_beta=float(graph.options[index]["beta"]))
            stage = "softmax"
        else:
            raise refuse(index, op, f"is not where a MobileNet {'layer' if stage == 'backbone' else stage} ends")
        current = op.outputs[0]
    if stage not in ("pooled", "squeezed", "softmax") or list(sub.outputs) != [current]:
        raise ArchitectureError(f"{file}: the graph does not end with the global pool, the logits or their "
                                f"softmax as its one output ({HINT})")
    if len(dtypes) != 1:
        raise UnsupportedFormatError(f"{file}: mixes {' and '.join(sorted(dtypes))} tensors ({HINT})")
    extra.setdefault("output_op", "NONE")
    extra["quantization"] = "uint8-per-tensor" if dtypes == {"uint8"} else "int8-per-channel"
    return tensors, activations, extra
