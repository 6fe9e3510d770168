"""Post-training quantization math: a float MobileNet plus calibrated activation ranges become an
int8 model in the terms of weights format version 2 (docs/weights-format.md).

The rules are those of the TFLite converter's full-integer post-training quantization, so that
a model quantized here can be compared with the converter's:

* activations int8, asymmetric: the calibrated [min, max] is first widened to contain 0 (so
  that 0.0, the padding value, is exact), scale = (max - min) / 255, and the zero point is the
  integer nearest to where 0.0 falls, taken from whichever end of the range gives the smaller
  rounding error, clamped to [-128, 127] (``activation_params``);
* weights int8, symmetric, narrow range [-127, 127]: scale = max |w| / 127, per output channel
  (``per_channel``) or for the whole tensor; zero point 0 (``weight_scales``);
* biases int32 with scale s_in * s_w[c] and zero point 0 (``quantize_bias``);
* BatchNorm folded into the kernels and biases first (``fold_batchnorm``), ReLU6 kept as the
  layer's fused activation (a clamp in the integer domain);
* the softmax output has TFLite's fixed parameters, scale 1/256 and zero point -128.

``quantize_model`` assembles the whole model: integer tensors with their per-dataset attributes,
the activation parameters by name, and the root attributes.  It computes nothing on images: the
calibration that measures the ranges runs the float model and lives in the application layer
(``mobilenet_np/calibrate.py``).  Pure NumPy; it imports only the architecture layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mobilenet_np import spec

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127                      # narrow range: -127..127, so that -w is representable
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128
QUANTIZATION = "int8-per-channel"     # the v2 `quantization` attribute: int8 rules for multipliers


# --- the scalar rules ------------------------------------------------------------------------

def activation_params(rmin: float, rmax: float, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> tuple[np.float32, int]:
    """(scale, zero point) of an asymmetric int8 tensor whose real values span [rmin, rmax].

    The range is widened to contain 0.0.  A range of width 0 (a tensor that was all zeros)
    gets scale 1.0 and zero point ``qmin``.  The zero point is the integer nearest to
    ``qmin - rmin / scale`` or ``qmax - rmax / scale``, whichever has the smaller rounding
    error (they differ only by float error), clamped to [qmin, qmax]; its rounding moves the
    represented range slightly (the "nudge"), keeping 0.0 exactly representable.
    """
    rmin, rmax = float(rmin), float(rmax)
    if not (math.isfinite(rmin) and math.isfinite(rmax)) or rmin > rmax:
        raise ValueError(f"activation range [{rmin}, {rmax}] is not a finite interval")
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    if rmax - rmin < np.finfo(np.float64).eps:
        return np.float32(1.0), qmin
    scale = (rmax - rmin) / (qmax - qmin)
    from_min, from_max = qmin - rmin / scale, qmax - rmax / scale
    error_min = abs(qmin) + abs(rmin / scale)
    error_max = abs(qmax) + abs(rmax / scale)
    zero_point = from_min if error_min < error_max else from_max
    if zero_point <= qmin:
        return np.float32(scale), qmin
    if zero_point >= qmax:
        return np.float32(scale), qmax
    return np.float32(scale), int(_round_half_away(zero_point))


def weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales: max |w| / 127 over each slice along ``axis`` (the output channel),
    or over the whole tensor (``axis`` None, one scale).  An all-zero slice gets scale 1.0
    (its integers are 0 whatever the scale)."""
    w = np.asarray(w, np.float64)
    if axis is None:
        peak = np.array([np.max(np.abs(w)) if w.size else 0.0])
    else:
        peak = np.max(np.abs(np.moveaxis(w, axis, -1)).reshape(-1, w.shape[axis]), axis=0)
    return np.where(peak > 0, peak / WEIGHT_MAX, 1.0).astype(np.float32)


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    """int8 weights round(w / scale), halves away from zero, clamped to [-127, 127]."""
    w = np.asarray(w, np.float64)
    scales = np.asarray(scales, np.float64)
    if axis is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        scales = scales.reshape(shape)
    q = _round_half_away(w / scales)
    return np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale, w_scales) -> tuple[np.ndarray, np.ndarray]:
    """(int32 biases, their float32 scales s_in * s_w[c]); one weight scale broadcasts."""
    b = np.asarray(b, np.float64)
    scales = (np.float64(np.float32(input_scale)) * np.asarray(w_scales, np.float32).astype(np.float64))
    scales = np.broadcast_to(scales, b.shape).astype(np.float32)
    q = _round_half_away(b / scales.astype(np.float64))
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32), scales


def fold_batchnorm(w: np.ndarray, gamma, beta, mean, variance, epsilon: float, depthwise: bool):
    """BatchNorm folded into the conv: w * gamma / sqrt(var + eps) per output channel, and the
    bias beta - mean * gamma / sqrt(var + eps).  Returned as float32 (weights, bias)."""
    factor = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    w = np.asarray(w, np.float64)
    folded = w * (factor.reshape(1, 1, -1, 1) if depthwise else factor.reshape(1, 1, 1, -1))
    bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * factor
    return folded.astype(np.float32), bias.astype(np.float32)


def _round_half_away(x):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# --- names -----------------------------------------------------------------------------------

def add_name(layer: spec.ConvLayer) -> str:
    """The activation name of a V2 residual add's output: ``expanded_conv_4/add``."""
    return f"{layer.scope.rsplit('/', 1)[0]}/add"


def activation_names(arch: spec.Architecture, num_classes: int) -> list[str]:
    """Every activation tensor a version-2 file names, in the network's order: ``input``, each
    conv's output (V2 projections before their add), each ``<block>/add``, ``global_pool`` and,
    with a classifier, ``Logits`` (``Predictions`` has fixed parameters, not a calibrated range)."""
    names = ["input"]
    for layer in arch.layers:
        names.append(layer.scope)
        if layer.adds_residual:
            names.append(add_name(layer))
    names.append("global_pool")
    if num_classes:
        names.append("Logits")
    return names


# --- the whole model -------------------------------------------------------------------------

@dataclass
class QuantizedModel:
    """A quantized MobileNet in the terms of format version 2: integer ``tensors`` under their
    TF-Slim names, each dataset's attributes (``tensor_attrs``: scale, zero_point,
    quantized_axis, fused_activation), ``activations`` {name: {scale, zero_point, dtype}}, and
    the root ``attrs``."""

    tensors: dict[str, np.ndarray]
    tensor_attrs: dict[str, dict]
    activations: dict[str, dict]
    attrs: dict = field(default_factory=dict)


def float_layers(arch: spec.Architecture, tensors: dict, folded: bool, epsilon: float) -> list[tuple]:
    """Per layer (float32 kernel, float32 bias), BatchNorm folded when the file has it unfolded."""
    out = []
    for layer in arch.layers:
        names = arch.names(layer)
        w = tensors[names.weights]
        if folded:
            out.append((np.asarray(w, np.float32), np.asarray(tensors[names.biases], np.float32)))
        else:
            stats = [tensors[n] for n in names.batchnorm]
            out.append(fold_batchnorm(w, *stats, epsilon, layer.kind == "depthwise"))
    return out


def quantize_model(arch: spec.Architecture, tensors: dict, attrs: dict, ranges: dict[str, tuple[float, float]],
                   per_channel: bool, provenance: dict | None = None) -> QuantizedModel:
    """The int8 model of a float one.  ``tensors``/``attrs``: a version-1 file's; ``ranges``:
    the calibrated [min, max] of every name in ``activation_names``; ``provenance``: stored as the
    root attribute ``calibration`` (what calibrated it)."""
    num_classes = int(attrs.get("num_classes", 0))
    missing = [n for n in activation_names(arch, num_classes) if n not in ranges]
    if missing:
        raise ValueError(f"no calibrated range for activation(s) {', '.join(missing)}")
    acts = {name: _activation(*ranges[name]) for name in activation_names(arch, num_classes)}
    epsilon = float(attrs.get("batchnorm_epsilon", spec.TF_BATCHNORM_EPSILON))
    folded = bool(attrs.get("batchnorm_folded", False))
    out_tensors, out_attrs = {}, {}
    previous = "input"
    for layer, (w, b) in zip(arch.layers, float_layers(arch, tensors, folded, epsilon)):
        names = arch.names(layer)
        axis = 2 if layer.kind == "depthwise" else 3
        activation = "RELU6" if layer.relu6 else "NONE"
        _quantize_conv(out_tensors, out_attrs, names, w, b, axis, per_channel, acts[previous]["scale"], activation)
        previous = add_name(layer) if layer.adds_residual else layer.scope
    if num_classes:
        names = arch.logits_names
        _quantize_conv(out_tensors, out_attrs, names, np.asarray(tensors[names.weights], np.float32),
                       np.asarray(tensors[names.biases], np.float32), 3, per_channel,
                       acts["global_pool"]["scale"], "NONE")
        acts["Predictions"] = {"scale": np.float32(SOFTMAX_SCALE), "zero_point": SOFTMAX_ZERO_POINT, "dtype": "int8"}
    root = {k: v for k, v in attrs.items() if k not in ("format", "format_version")}
    root.update({"format_version": 2, "batchnorm_folded": True, "quantization": QUANTIZATION,
                 "per_channel": bool(per_channel), "global_pool_op": "MEAN",
                 "output_op": "SOFTMAX" if num_classes else "NONE"})
    if num_classes:
        root.update({"logits_op": "CONV_2D", "softmax_beta": 1.0})
    notes = list(root.get("notes", []))
    notes.append("int8 post-training quantization: min/max calibration, "
                 + ("per-channel" if per_channel else "per-tensor") + " symmetric weights")
    root["notes"] = notes
    if provenance is not None:
        root["calibration"] = dict(provenance)
    return QuantizedModel(out_tensors, out_attrs, acts, root)


def _activation(rmin: float, rmax: float) -> dict:
    scale, zero_point = activation_params(rmin, rmax)
    return {"scale": scale, "zero_point": int(zero_point), "dtype": "int8"}


def _quantize_conv(tensors, attrs, names: spec.TensorNames, w, b, axis, per_channel, input_scale, activation):
    scales = weight_scales(w, axis if per_channel else None)
    tensors[names.weights] = quantize_weights(w, scales, axis if per_channel else None)
    attrs[names.weights] = {"scale": scales, "zero_point": np.zeros(scales.shape, np.int32),
                            "quantized_axis": axis, "fused_activation": activation}
    q_bias, bias_scales = quantize_bias(b, input_scale, scales)
    tensors[names.biases] = q_bias
    attrs[names.biases] = {"scale": bias_scales, "zero_point": np.zeros(bias_scales.shape, np.int32)}


def dequantize_weights(q: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """The float kernel an int8 one stands for (for error measurements): q * scale per channel."""
    scales = np.asarray(scales, np.float32)
    shape = [1] * q.ndim
    if scales.size > 1:
        shape[axis] = -1
    return (q.astype(np.float32) * scales.reshape(shape)).astype(np.float32)
