"""benchmarks/results/quantize.md: how close `weights-tools quantize` comes to the float model, and
to the TFLite converter's full-integer quantization of the same float weights and calibration images.

    PYTHONPATH=$PWD python -m benchmarks.quantize_report [--out benchmarks/results/quantize.md]

Models: the real float weights in ../shared/weights, V1 0.25/160 (the jevois float .tflite, a
1001-class classifier) and V2 0.5/96 (the TF.js feature vector, no classifier).  Images: the
photos in ../shared/images (sorted by name), split in two halves A (even positions) and B (odd):
calibrate on one half, evaluate on the other, both ways; and calibrate on seeded synthetic images
(uniform noise and smooth random gradients) and evaluate on all photos.  For each: our int8 model
(per-channel and per-tensor weights), and the converter's (per-channel, the converter's default;
per-tensor with its ``_experimental_disable_per_channel``), calibrated on the same images.
Measures, against the float model on the evaluation images: top-1 agreement (classifier only), the
cosine similarity of the pooled features (min and mean) and of the logits.

The int8 models run on the integer reference kernels (kernels/integer_reference.py): ours with
``int8_forward`` below, the converter's .tflite with ``forward/quantized.py`` (LiteRT's reference
semantics, bit-exact to LiteRT in tests/test_quantized_forward.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / "benchmarks" / "results" / "quantize.md"
SYNTHETIC_SEED, SYNTHETIC_IMAGES = 20261201, 16


# --- our int8 model on the integer reference kernels -----------------------------------------

def int8_forward(qm, arch, images: np.ndarray) -> dict:
    """Run a ``weights_tools.quantize.QuantizedModel`` on [N, H, W, 3] images in [0, 1] with the
    integer reference kernels, as TFLite's reference kernels would run the same integers:
    returns the dequantized ``features`` [N, C] and, with a classifier, ``logits`` [N, K]."""
    from mobilenet_np import spec
    from mobilenet_np.kernels import integer_reference as iref
    from weights_tools.quantize import add_name

    acts = qm.activations

    def params(name):
        return float(acts[name]["scale"]), int(acts[name]["zero_point"])

    x = iref.quantize(images * np.float32(2) - np.float32(1), *params("input"), np.int8)
    current, block_input = "input", None
    for g in spec.geometry(arch, images.shape[1:3]):
        layer = g.layer
        if layer.block_start:
            block_input = (x, current)
        names = arch.names(layer)
        x = _conv(qm, names, layer.weight_name, x, params(current), params(layer.scope), layer.stride if layer.kernel > 1 else 1,
                  g.pad if layer.kernel > 1 else (0, 0, 0, 0), g.out_hw, layer.kind == "depthwise")
        current = layer.scope
        if layer.adds_residual:
            (b, b_name), out = block_input, add_name(layer)
            x = iref.add(x, *params(current), b, *params(b_name), *params(out), (-128, 127), np.int8)
            current = out
    pooled = iref.mean_hw(x, *params(current), *params("global_pool"), np.int8)
    out = {"features": iref.dequantize(pooled, *params("global_pool"))}
    if "Logits" in acts:
        names = arch.logits_names
        logits = _conv(qm, names, "weights", pooled[:, None, None, :], params("global_pool"), params("Logits"),
                       1, (0, 0, 0, 0), (1, 1), False)[:, 0, 0, :]
        out["logits"] = iref.dequantize(logits, *params("Logits"))
    return out


def _conv(qm, names, _, x, in_params, out_params, stride, pad, out_hw, depthwise):
    from mobilenet_np.kernels import integer_reference as iref
    w, attrs = qm.tensors[names.weights], qm.tensor_attrs[names.weights]
    accumulate = iref.depthwise_conv2d_accumulate if depthwise else iref.conv2d_accumulate
    acc = accumulate(x, in_params[1], w, 0, qm.tensors[names.biases], stride, pad, out_hw)
    multiplier, shift = iref.conv_multipliers(in_params[0], attrs["scale"], out_params[0], per_tensor=False)
    if attrs["scale"].size == 1:
        multiplier = np.repeat(multiplier, acc.shape[-1])
        shift = np.repeat(shift, acc.shape[-1])
    clamp = iref.activation_range(attrs["fused_activation"], *out_params, np.int8)
    return iref.requantize(acc, multiplier, shift, out_params[1], clamp, np.int8)
