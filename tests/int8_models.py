"""Test-side builders of full-integer int8 .tflite MobileNets, made by the TFLite converter from
our float weights, and the LiteRT runs they are compared with.

``tf_network`` is the network as TensorFlow ops: the reference forward loop run with parity.py's
TensorFlow ops (conv / depthwise with SAME padding, fused BatchNorm, ReLU6, V2's residual adds),
the global mean, and a 1x1 logits conv, reshape and softmax when the model has a classifier,
all weights constants; the converter folds BatchNorm.  (A Keras model would do too, but Keras 3
exports a SavedModel first, which took 50 of the 55 seconds of a conversion here.)  ``int8_tflite`` converts it with post-training full-integer
quantization: per-channel int8 weights, int8 activations calibrated on seeded images in [-1, 1],
int8 input and output.  The network input is the [-1, 1] image (the hub's x * 2 - 1 stays outside,
because a quantized MUL/ADD pair in front is not part of this test).

Deliberately not here: any comparison or tolerance (the tests decide), or our own integer code.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np

from mobilenet_np import spec
from mobilenet_np.forward.reference import forward, layer_params
from mobilenet_np.parity import TensorFlowOps

CALIBRATION_SEED = 11
CALIBRATION_IMAGES = 8


class _NetworkInputOps(TensorFlowOps):
    """TensorFlow's ops for the reference forward loop, fed the [-1, 1] network input directly."""

    def hub_input(self, x):
        return x


def tf_network(model, input_hw, softmax: bool = False):
    """A concrete tf.function computing ``model``'s network on [-1, 1] images [1, H, W, 3]:
    the reference forward loop with TensorFlow's ops (parity.py), weights as constants, then the
    global mean and, with a classifier, the 1x1 logits conv, reshape and (``softmax``) softmax."""
    import tensorflow as tf

    ops = _NetworkInputOps()
    geo = spec.geometry(model.arch, tuple(input_hw))
    params = layer_params(model.arch, model.tensors, model.folded)
    epsilon = float(model.attrs.get("batchnorm_epsilon", spec.TF_BATCHNORM_EPSILON))
    names = model.arch.logits_names

    def network(x):
        y = tf.reduce_mean(forward(params, geo, x, epsilon, ops=ops), axis=[1, 2], keepdims=True)
        if model.num_classes:
            y = tf.nn.bias_add(tf.nn.conv2d(y, model.tensors[names.weights], 1, "VALID"),
                               model.tensors[names.biases])
            y = tf.reshape(y, [1, model.num_classes])
            if softmax:
                y = tf.nn.softmax(y)
        return y

    return tf.function(network).get_concrete_function(tf.TensorSpec([1, *input_hw, 3], tf.float32))


def int8_tflite(model, input_hw, softmax: bool = False) -> bytes:
    """The full-integer int8 .tflite of ``model`` at ``input_hw`` (per-channel weights)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rng = np.random.default_rng(CALIBRATION_SEED)

    def calibration():
        for _ in range(CALIBRATION_IMAGES):
            yield [rng.uniform(-1, 1, (1, *input_hw, 3)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_network(model, input_hw, softmax)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return converter.convert()


def litert(path, resolver: str, preserve_all_tensors: bool = False):
    """A LiteRT interpreter on ``path`` with the op resolver "reference", "builtin" (optimized
    kernels, no delegate) or "default" (XNNPACK delegate, as users run it)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kinds = {"reference": OpResolverType.BUILTIN_REF, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "default": OpResolverType.AUTO}
    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=kinds[resolver],
                              experimental_preserve_all_tensors=preserve_all_tensors)
    interpreter.allocate_tensors()
    return interpreter


def invoke(interpreter, x: np.ndarray) -> np.ndarray:
    """One image [1, H, W, 3] through ``interpreter``; the first output."""
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
