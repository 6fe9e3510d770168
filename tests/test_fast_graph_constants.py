"""FastQuantizedGraph on an int8 ADD whose second operand is a constant of the activation's shape
(found in review): the plan holds int8 activations as uint8 + 128 but flips only activations, not
constants, so the ADD's shift applies to its activation operands only.  With kernels="xnnpack" at
batch 1 (same shapes: the Numba ADD runs) the constant was read 128 off before the fix.  Every op's
bytes and dtype, through the plan and through ``graph.ops`` (``_single``), for each kernel set."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

from mobilenet_np.forward.quantized import KERNELS, QuantizedGraph
from weights_tools import tflite_ops as tfl


@pytest.fixture(scope="module")
def add_constant_graph(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(5)
    k1 = rng.normal(0, 0.4, (3, 3, 3, 6)).astype(np.float32)
    k2 = rng.normal(0, 0.4, (1, 1, 6, 6)).astype(np.float32)
    constant = rng.normal(0, 1.0, (1, 5, 4, 6)).astype(np.float32)

    def network(x):
        y = tf.nn.relu6(tf.nn.conv2d(x, k1, 2, "SAME"))
        return tf.nn.conv2d(y + constant, k2, 1, "SAME")

    fn = tf.function(network).get_concrete_function(tf.TensorSpec([1, 9, 7, 3], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, 9, 7, 3)).astype(np.float32)]
                                                for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("addconst") / "add_constant.tflite"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        path.write_bytes(converter.convert())
    return path


def test_add_of_a_constant_gives_the_reference_bytes(add_constant_graph):
    from mobilenet_np.forward.quantized_engine import FastQuantizedGraph

    graph = QuantizedGraph(add_constant_graph)
    adds = [op for op in graph.sub.operators if op.opcode == tfl.ADD]
    assert adds and any(graph.constant(k) is not None for k in adds[0].inputs), "the ADD reads no constant"
    x = np.random.default_rng(1).integers(-128, 128, (1, 9, 7, 3)).astype(np.int8)
    for kernels in KERNELS:
        want, got, single = {}, {}, {}
        QuantizedGraph(add_constant_graph, kernels).run(x, on_op=lambda i, op, y: want.__setitem__(i, y.copy()))
        fast = FastQuantizedGraph(add_constant_graph, kernels)
        fast.run(x, on_op=lambda i, op, y: got.__setitem__(i, y.copy()))
        QuantizedGraph.run(fast, x, on_op=lambda i, op, y: single.__setitem__(i, y.copy()))   # graph.ops, _single
        for name, seen in (("plan", got), ("ops", single)):
            differ = [i for i in want if want[i].dtype != seen[i].dtype or not np.array_equal(want[i], seen[i])]
            assert not differ, f"{kernels} ({name}): ops {differ} differ"
