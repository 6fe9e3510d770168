"""Post-training quantization math: a float MobileNet plus calibrated activation ranges become an
int8 model in the terms of weights format version 2 (docs/weights-format.md).

The rules are those of the TFLite converter's full-integer post-training quantization, so that
a model quantized here can be compared with the converter's:

* activations int8, asymmetric: the calibrated [min, max] is first widened to contain 0 (so
  that 0.0, the padding value, is exact), scale = (max - min) / 255, and the zero point is the
  integer nearest to where 0.0 falls, taken from whichever end of the range gives the smaller
  rounding error, clamped to [-128, 127] (``activation_params``);
* weights int8, symmetric, narrow range [-127, 127]: scale = max |w| / 127, per output channel
  (``per_channel``) or for the whole tensor, dead channels widened to |w| 5e-7; zero point 0
  (``weight_scales``);
* biases int32 with scale s_in * s_w[c] and zero point 0 (``quantize_bias``); where a bias would
  exceed 2^30 steps, the weight scale is raised until it does not (``bias_safe_scales``);
* BatchNorm folded into the kernels and biases first (``fold_batchnorm``), ReLU6 kept as the
  layer's fused activation (a clamp in the integer domain);
* a V2 linear projection that feeds a residual add is quantized over the union of its own range
  and the add's (``projection="union"``, what the converter does; ``"own"``: its range alone);
* the softmax output has TFLite's fixed parameters, scale 1/256 and zero point -128.

``quantize_model`` assembles the whole model in the in-memory form of a version-2 file
(``weights_file_v2.QuantizedWeightsFile``: integer tensors with their scales, zero points, axes and
fused activations, the activation parameters by name, and the root attributes).  It computes
nothing on images: the calibration that measures the ranges runs the float model and lives in the
application layer (``mobilenet_np/calibrate.py``).  Pure NumPy; it imports only the architecture layer.
"""

from __future__ import annotations

import math

import numpy as np

from mobilenet_np import spec
from mobilenet_np import weights_file_v2 as v2
from mobilenet_np.weights_file_v2 import residual_add_name as add_name

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127                      # narrow range: -127..127, so that -w is representable
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
BIAS_LIMIT = float(1 << 30)            # the largest |bias| in steps of s_in * s_w (see bias_safe_scales)
NEAR_ZERO = 1e-6                      # the converter's narrowest weight range (see weight_scales)
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
    or over the whole tensor (``axis`` None, one scale).

    A slice whose range [min(w, 0), max(w, 0)] is at most ``NEAR_ZERO`` wide (a dead channel:
    real V2 weights have channels of |w| ~ 1e-20 with biases ~ 0.1) is first widened to at least
    [-NEAR_ZERO / 2, NEAR_ZERO / 2], as the converter does: otherwise its scale, and with it the
    bias scale s_in * s_w, would be so small that the bias overflows int32.
    """
    w = np.asarray(w, np.float64)
    slices = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    low = np.minimum(slices.min(axis=1, initial=0.0), 0.0)
    high = np.maximum(slices.max(axis=1, initial=0.0), 0.0)
    narrow = high - low <= NEAR_ZERO
    low = np.where(narrow, np.minimum(low, -NEAR_ZERO / 2), low)
    high = np.where(narrow, np.maximum(high, NEAR_ZERO / 2), high)
    return (np.maximum(-low, high) / WEIGHT_MAX).astype(np.float32)


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    """int8 weights round(w / scale), halves away from zero, clamped to [-127, 127], computed in
    float32 as the converter does: per channel by dividing by each scale; per tensor (``axis``
    None) as TFLite's symmetric tensor quantizer does, multiplying by 127 / max |w| (the two
    differ on about 1 weight in 10,000); ``scales`` are ``weight_scales(w, axis)``'s."""
    w = np.asarray(w, np.float32)
    if axis is None:
        peak = np.float32(scales.reshape(-1)[0]) * np.float32(WEIGHT_MAX) if not w.size else np.max(np.abs(w))
        peak = max(peak, np.float32(NEAR_ZERO / 2))
        ratio = w * (np.float32(WEIGHT_MAX) / np.float32(peak))
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        ratio = w / np.asarray(scales, np.float32).reshape(shape)
    q = np.sign(ratio) * np.floor(np.abs(ratio) + np.float32(0.5))
    return np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale, w_scales) -> tuple[np.ndarray, np.ndarray]:
    """(int32 biases, their float32 scales s_in * s_w[c]); one weight scale broadcasts."""
    b = np.asarray(b, np.float64)
    scales = (np.float64(np.float32(input_scale)) * np.asarray(w_scales, np.float32).astype(np.float64))
    scales = np.broadcast_to(scales, b.shape).astype(np.float32)
    q = _round_half_away(b / scales.astype(np.float64))
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32), scales


def bias_safe_scales(scales: np.ndarray, b: np.ndarray, input_scale) -> np.ndarray:
    """Weight scales raised where the bias would not fit in +-2^30 steps of s_in * s_w: there
    s_w = |b| / (s_in * 2^30), as the converter adjusts them (real V2 0.5's first conv has a
    channel of |w| 2e-20 with a bias of -2.0; its weights quantize to 0 either way)."""
    needed = np.abs(np.asarray(b, np.float64)) / (float(np.float32(input_scale)) * BIAS_LIMIT)
    return np.maximum(np.asarray(scales, np.float64), needed).astype(np.float32)


def fold_batchnorm(w: np.ndarray, gamma, beta, mean, variance, epsilon: float, depthwise: bool):
    """BatchNorm folded into the conv, in float32 as TensorFlow folds it: the factor
    gamma * (1 / sqrt(var + eps)) multiplies each output channel of the kernel, and the bias is
    beta - mean * factor.  Returned as float32 (weights, bias)."""
    f32 = np.float32
    factor = np.asarray(gamma, f32) * (f32(1.0) / np.sqrt(np.asarray(variance, f32) + f32(epsilon)))
    w = np.asarray(w, f32)
    folded = w * (factor.reshape(1, 1, -1, 1) if depthwise else factor.reshape(1, 1, 1, -1))
    bias = np.asarray(beta, f32) - np.asarray(mean, f32) * factor
    return folded.astype(f32), bias.astype(f32)


def _round_half_away(x):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# --- names -----------------------------------------------------------------------------------

def activation_names(arch: spec.Architecture, num_classes: int) -> list[str]:
    """The activations whose range calibration measures: every name of a version-2 file
    (``weights_file_v2.activation_names``) but ``Predictions``, whose parameters are fixed."""
    return v2.activation_names(arch, num_classes, "NONE")


# --- the whole model -------------------------------------------------------------------------

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


PROJECTIONS = ("union", "own")


def quantize_model(arch: spec.Architecture, tensors: dict, attrs: dict, ranges: dict[str, tuple[float, float]],
                   per_channel: bool, provenance: dict | None = None, projection: str = "union",
                   path: str = "<quantized in memory>") -> v2.QuantizedWeightsFile:
    """The int8 model of a float one.  ``tensors``/``attrs``: a version-1 file's; ``ranges``:
    the calibrated [min, max] of every name in ``activation_names``; ``provenance``: stored as the
    root attribute ``calibration`` (what calibrated it); ``projection``: the parameters of a V2
    projection that feeds a residual add, "union" (over its range and the add's, as the TFLite
    converter chooses them) or "own" (its own calibrated range).  The result is what
    ``weights_file.read`` gives for a version-2 file (``path`` names it in messages): ``weights_file.write_quantized`` writes it,
    ``QuantizedMobileNet`` runs it."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    num_classes = int(attrs.get("num_classes", 0))
    missing = [n for n in activation_names(arch, num_classes) if n not in ranges]
    if missing:
        raise ValueError(f"no calibrated range for activation(s) {', '.join(missing)}")
    ranges = dict(ranges)
    if projection == "union":
        for layer in arch.layers:
            if layer.adds_residual:
                (p_lo, p_hi), (a_lo, a_hi) = ranges[layer.scope], ranges[add_name(layer)]
                ranges[layer.scope] = (min(p_lo, a_lo), max(p_hi, a_hi))
    acts = {name: _activation(*ranges[name]) for name in activation_names(arch, num_classes)}
    epsilon = float(attrs.get("batchnorm_epsilon", spec.TF_BATCHNORM_EPSILON))
    folded = bool(attrs.get("batchnorm_folded", False))
    out_tensors = {}
    previous = "input"
    for layer, (w, b) in zip(arch.layers, float_layers(arch, tensors, folded, epsilon)):
        names = arch.names(layer)
        axis = 2 if layer.kind == "depthwise" else 3
        activation = "RELU6" if layer.relu6 else "NONE"
        _quantize_conv(out_tensors, names, w, b, axis, per_channel, acts[previous].scale, activation)
        previous = add_name(layer) if layer.adds_residual else layer.scope
    if num_classes:
        names = arch.logits_names
        _quantize_conv(out_tensors, names, np.asarray(tensors[names.weights], np.float32),
                       np.asarray(tensors[names.biases], np.float32), 3, per_channel,
                       acts["global_pool"].scale, "NONE")
        acts["Predictions"] = v2.ActivationQuantization(SOFTMAX_SCALE, SOFTMAX_ZERO_POINT, "int8")
    root = {k: v for k, v in attrs.items() if k not in ("format", "format_version")}
    root.update({"format": "mobilenet-np-weights", "format_version": v2.FORMAT_VERSION, "batchnorm_folded": True,
                 "quantization": QUANTIZATION,
                 "per_channel": bool(per_channel), "residual_projection": projection, "global_pool_op": "MEAN",
                 "output_op": "SOFTMAX" if num_classes else "NONE"})
    if num_classes:
        root.update({"logits_op": "CONV_2D", "softmax_beta": 1.0})
    notes = list(root.get("notes", []))
    notes.append("int8 post-training quantization: min/max calibration, "
                 + ("per-channel" if per_channel else "per-tensor") + " symmetric weights")
    root["notes"] = notes
    if provenance is not None:
        root["calibration"] = dict(provenance)
    return v2.QuantizedWeightsFile(path, out_tensors, acts, root)


def _activation(rmin: float, rmax: float) -> v2.ActivationQuantization:
    scale, zero_point = activation_params(rmin, rmax)
    return v2.ActivationQuantization(float(scale), int(zero_point), "int8")


def _quantize_conv(tensors, names: spec.TensorNames, w, b, axis, per_channel, input_scale, activation):
    if per_channel:
        scales = bias_safe_scales(weight_scales(w, axis), b, input_scale)
        values = quantize_weights(w, scales, axis)
    else:
        scales = weight_scales(w, None)
        raised = bias_safe_scales(np.repeat(scales, len(b)), b, input_scale).max()
        if raised > scales[0]:          # a raised tensor scale: divide by it, channel by channel
            scales = np.float32([raised])
            values = quantize_weights(w, np.repeat(scales, w.shape[axis]), axis)
        else:
            values = quantize_weights(w, scales, None)
    tensors[names.weights] = v2.QuantizedTensor(values, scales, np.zeros(scales.shape, np.int32), axis, activation)
    q_bias, bias_scales = quantize_bias(b, input_scale, scales)
    tensors[names.biases] = v2.QuantizedTensor(q_bias, bias_scales, np.zeros(bias_scales.shape, np.int32), 0, None)
