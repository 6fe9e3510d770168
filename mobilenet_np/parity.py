"""Parity with TensorFlow: the TF-Slim forward pass computed by TensorFlow's own kernels.

Runs the readable forward loop (``forward/reference.py``) over the layer list of
``mobilenet_np.spec`` (the structure) but computes every step with TensorFlow ops: ``tf.nn.conv2d`` / ``tf.nn.depthwise_conv2d`` with padding "SAME",
``fused_batch_norm`` (inference, epsilon 1e-3) or the stored bias of a folded source,
``relu6``, ``reduce_mean``, and a 1x1 conv with bias for the logits.  ``compare`` runs that and
a mobilenet-np model on the same images and reports the difference at every endpoint, so a user
sees where two implementations part.  Needs the ``parity`` extra (tensorflow-cpu); nothing else
in the package imports this module.  The structure itself is checked by the tests against
graphs that TensorFlow and LiteRT run on their own (tests/test_parity_real.py).
"""

from __future__ import annotations

import numpy as np

from . import spec
from .forward.reference import forward, layer_params


class TensorFlowOps:
    """The ops of ``forward.reference.forward`` computed by TensorFlow.  The padding the spec
    computed is ignored on purpose: TensorFlow pads "SAME" by its own rules, so the comparison
    checks our geometry too."""

    def __init__(self):
        import tensorflow as tf
        self.tf = tf

    def hub_input(self, images):
        return self.tf.constant(images, self.tf.float32) * 2.0 - 1.0     # hub_input/Mul, hub_input/Sub

    def conv2d(self, x, w, stride, pad, out_hw):
        return self.tf.nn.conv2d(x, w, strides=stride, padding="SAME")

    def depthwise_conv2d(self, x, w, stride, pad, out_hw):
        return self.tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME")

    def pointwise_conv2d(self, x, w):
        return self.tf.nn.conv2d(x, w, strides=1, padding="SAME")

    def batch_norm(self, x, gamma, beta, mean, variance, epsilon):
        return self.tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=mean, variance=variance,
                                                     epsilon=epsilon, is_training=False)[0]

    def relu6(self, x):
        return self.tf.nn.relu6(x)


def tf_endpoints(arch: spec.Architecture, tensors: dict[str, np.ndarray], images01: np.ndarray,
                 num_classes: int = 0) -> dict[str, np.ndarray]:
    """Every endpoint of the network as TensorFlow computes it (the reference forward loop
    with ``TensorFlowOps``): layer outputs, ``global_pool`` and, with a classifier, the logits."""
    ops = TensorFlowOps()
    tf = ops.tf
    folded = arch.names(arch.layers[0]).biases in tensors       # BatchNorm folded by the exporter
    geo = spec.geometry(arch, images01.shape[1:3])
    out: dict[str, np.ndarray] = {}

    def on_layer(i, y):
        for name in geo[i].layer.endpoints:
            out[name] = y.numpy()

    last = forward(layer_params(arch, tensors, folded), geo, images01, spec.TF_BATCHNORM_EPSILON, on_layer, ops)
    pooled = tf.reduce_mean(last, axis=[1, 2], keepdims=True)
    out[arch.pool_endpoint] = pooled.numpy()
    if num_classes:
        y = tf.nn.conv2d(pooled, tensors[arch.logits_names.weights], strides=1, padding="VALID")
        y = tf.nn.bias_add(y, tensors[arch.logits_names.biases])
        out["Logits"] = tf.squeeze(y, [1, 2]).numpy()
        out["Predictions"] = tf.nn.softmax(out["Logits"]).numpy()
    return out


def compare(model, images01: np.ndarray) -> list[dict]:
    """Run TensorFlow and ``model`` on the same images; one row per endpoint, in network order:
    name, shape, max absolute difference, and that difference relative to max(1, TensorFlow's
    largest magnitude) -- absolute for ReLU6 outputs in [0, 6], relative for the unbounded linear
    projections and logits.  A quantized model is refused (ValueError): TensorFlow's float graph
    is no reference for its integers, which equal LiteRT's (tests/test_weights_v2.py)."""
    if getattr(model, "quantized", False):
        raise ValueError(f"{model.name}: parity compares a float model with TensorFlow; this model is quantized "
                         "(format version 2). Compare its float original, or a .tflite source (run dequantized)")
    expected = tf_endpoints(model.arch, model.tensors, images01, model.num_classes)
    got = model.endpoints(images01, list(expected))
    rows = []
    for name, ref in expected.items():
        diff = float(np.abs(got[name] - ref).max())
        rows.append({"endpoint": name, "shape": tuple(ref.shape), "max_abs": diff,
                     "scaled": diff / max(float(np.abs(ref).max()), 1.0)})
    return rows
