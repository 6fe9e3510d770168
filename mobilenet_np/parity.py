"""Parity with TensorFlow: the TF-Slim forward pass computed by TensorFlow's own kernels.

Walks the layer list of ``mobilenet_np.spec`` (the structure) but computes every step with
TensorFlow ops: ``tf.nn.conv2d`` / ``tf.nn.depthwise_conv2d`` with padding "SAME",
``fused_batch_norm`` (inference, epsilon 1e-3) or the stored bias of a folded source,
``relu6``, ``reduce_mean``, and a 1x1 conv with bias for the logits.  ``compare`` runs that and
a mobilenet-np model on the same images and reports the difference at every endpoint, so a user
sees where two implementations part.  Needs the ``parity`` extra (tensorflow-cpu); nothing else
in the package imports this module.  The structure itself is checked by the tests against
graphs that TensorFlow and LiteRT run on their own (tests/test_parity_real.py).
"""

from __future__ import annotations

import numpy as np

from mobilenet_np import spec


def tf_endpoints(arch: spec.Architecture, tensors: dict[str, np.ndarray], images01: np.ndarray,
                 num_classes: int = 0) -> dict[str, np.ndarray]:
    import tensorflow as tf

    x = tf.constant(images01, tf.float32) * 2.0 - 1.0        # hub_input/Mul, hub_input/Sub
    out: dict[str, np.ndarray] = {}
    block_input = None
    for layer in arch.layers:
        prefix = f"{arch.scope}/{layer.scope}"
        if layer.block_start:
            block_input = x
        w = tf.constant(tensors[f"{prefix}/{layer.weight_name}"])
        s = layer.stride
        if layer.kind == "depthwise":
            y = tf.nn.depthwise_conv2d(x, w, strides=[1, s, s, 1], padding="SAME")
        else:
            y = tf.nn.conv2d(x, w, strides=s, padding="SAME")
        if f"{prefix}/biases" in tensors:          # BatchNorm folded by the source's exporter
            y = tf.nn.bias_add(y, tensors[f"{prefix}/biases"])
        else:
            bn = [tf.constant(tensors[f"{prefix}/BatchNorm/{k}"])
                  for k in ("gamma", "beta", "moving_mean", "moving_variance")]
            y = tf.compat.v1.nn.fused_batch_norm(y, *bn[:2], mean=bn[2], variance=bn[3],
                                                 epsilon=spec.TF_BATCHNORM_EPSILON, is_training=False)[0]
        if layer.relu6:
            y = tf.nn.relu6(y)
        if layer.adds_residual:
            y = y + block_input
        for name in layer.endpoints:
            out[name] = y.numpy()
        x = y
    pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    out["global_pool"] = pooled.numpy()
    if num_classes:
        logits = f"{arch.scope}/{spec.LOGITS_SCOPE}"
        y = tf.nn.conv2d(pooled, tensors[f"{logits}/weights"], strides=1, padding="VALID")
        y = tf.nn.bias_add(y, tensors[f"{logits}/biases"])
        out["Logits"] = tf.squeeze(y, [1, 2]).numpy()
        out["Predictions"] = tf.nn.softmax(out["Logits"]).numpy()
    return out


def compare(model, images01: np.ndarray) -> list[dict]:
    """Run TensorFlow and ``model`` on the same images; one row per endpoint, in network order:
    name, shape, max absolute difference, and that difference relative to max(1, TensorFlow's
    largest magnitude) -- absolute for ReLU6 outputs in [0, 6], relative for the unbounded linear
    projections and logits."""
    expected = tf_endpoints(model.arch, model.tensors, images01, model.num_classes)
    got = model.endpoints(images01, list(expected))
    rows = []
    for name, ref in expected.items():
        diff = float(np.abs(got[name] - ref).max())
        rows.append({"endpoint": name, "shape": tuple(ref.shape), "max_abs": diff,
                     "scaled": diff / max(float(np.abs(ref).max()), 1.0)})
    return rows
