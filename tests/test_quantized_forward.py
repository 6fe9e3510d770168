"""The integer forward pass (forward/quantized.py) against LiteRT, byte for byte.

* Google's uint8 V1 0.5/160 files (Coral and jevois copies), on the photos of shared/images and
  on seeded random inputs: every op's output equals LiteRT's reference kernels
  (``OpResolverType.BUILTIN_REF``, all tensors kept), and with ``kernels="optimized"`` every op
  equals LiteRT's optimized builtin kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
* Full-integer int8 models that the TFLite converter makes from our float V1 0.5 and V2 0.5
  (seeded weights, and the real V2 hub weights), per-channel, with V2's residual ADDs: every op
  equals the reference kernels, and the optimized ones, at 96, 160 and odd sizes.
* A small converted graph of the other ops (QUANTIZE, DEQUANTIZE, stride-2 conv, depthwise with
  RELU, ADD of differently scaled branches, AVERAGE_POOL_2D SAME and VALID, MEAN,
  FULLY_CONNECTED) at odd sizes with 5 and 13 channels: the same two checks.
* LiteRT's default kernels (the XNNPACK delegate) depart from its reference kernels by a few
  steps here and there (XNNPACK requantizes with arithmetic of its own, not yet pinned down).
  The tests say where (a warning: how many output bytes, by how much, the first few) and do
  not reproduce it.

Each .tflite is converted once per module (about 10-20 s each); LiteRT's reference kernels on
every op cost a few seconds per model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import mobilenet_np as mnp
from mobilenet_np import spec
from conftest import shared_path
from int8_models import int8_tflite, invoke, litert
from mobilenet_np.forward.quantized import KERNELS, QuantizedGraph
from mobilenet_np.kernels import integer_reference as iref
from mobilenet_np.preprocess import preprocess
from weights_tools.tflite_schema import ACTIVATION_NAMES, OP_NAMES

UINT8_DIR = ("weights", "mobilenet_v1_050_160", "tflite_uint8_quant")
UINT8_FILES = ("mobilenet_v1_0.5_160_quant.coral.tflite", "mobilenet_v1_0.5_160_quant.jevois.tflite")
V2_HUB = ("weights", "mobilenet_v2_050_96", "tfjs_graph_feature_vector")
RANDOM_INPUTS = 2
INPUT_SEED = 170
WEIGHTS_SEED = 17


def photos(size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """The shared photos resized as ``preprocess`` does ("hub", no draft), in [0, 1]."""
    folder = shared_path("images")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [p.name for p in files], np.stack([preprocess(p, size, draft=False) for p in files])


def random_inputs(dtype, size, count=RANDOM_INPUTS, seed=INPUT_SEED) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max, (count, *size, 3), endpoint=True).astype(dtype)


def per_op_differences(path: Path, graph: QuantizedGraph, images: np.ndarray, names: list[str],
                       resolver: str = "reference") -> list[str]:
    """Run ``images`` through our graph (one batch) and LiteRT's ``resolver`` kernels (one image
    at a time, all tensors kept); one line per (image, op) whose output bytes differ."""
    ours = {}
    graph.run(images, on_op=lambda i, op, y: ours.__setitem__(i, y))
    interpreter = litert(path, resolver, preserve_all_tensors=True)
    problems = []
    for n, name in enumerate(names):
        invoke(interpreter, images[n:n + 1])
        for i, op in enumerate(graph.sub.operators):
            theirs = interpreter.get_tensor(op.outputs[0])
            mine = ours[i][n:n + 1].reshape(theirs.shape)
            if not np.array_equal(mine, theirs):
                diff = np.abs(mine.astype(int) - theirs.astype(int))
                problems.append(f"{name}: op {i} {OP_NAMES.get(op.opcode, op.opcode)} "
                                f"({graph.tensor(op.outputs[0]).name[:60]}): {int((diff > 0).sum())} of "
                                f"{diff.size} bytes differ, by up to {int(diff.max())}")
                break                                     # later ops inherit the difference
    return problems


def output_disagreements(path: Path, images: np.ndarray, names: list[str], reference: np.ndarray,
                         resolver: str) -> tuple[int, int, list[str]]:
    """Where LiteRT with ``resolver`` differs from the reference outputs: (bytes that differ,
    the largest difference, the first few as "input[index]: values")."""
    interpreter = litert(path, resolver)
    count, largest, lines = 0, 0, []
    for n, name in enumerate(names):
        theirs = invoke(interpreter, images[n:n + 1]).reshape(-1).astype(int)
        ours = reference[n].reshape(-1).astype(int)
        where = np.flatnonzero(theirs != ours)
        count += where.size
        largest = max(largest, int(np.abs(theirs - ours).max()))
        lines += [f"{name}[{k}]: reference {ours[k]}, {resolver} {theirs[k]}" for k in where[:2]]
    return count, largest, lines


def assert_every_op_equals_reference(case):
    problems = per_op_differences(*case)
    assert not problems, "\n".join(problems)


def assert_every_op_equals_optimized(case):
    """kernels="optimized" against LiteRT's optimized builtin kernels (no delegate), every op."""
    path, _, images, names = case
    problems = per_op_differences(path, QuantizedGraph(path, kernels="optimized"), images, names, "builtin")
    assert not problems, "\n".join(problems)


def assert_outputs_equal_xnnpack(case):
    """kernels="xnnpack" against LiteRT's default kernels (the XNNPACK delegate, whose
    intermediate tensors cannot be read back): every output byte.  Where XNNPACK departs from
    the reference kernels, a warning says where, for the record."""
    path, graph, images, names = case
    count, largest, lines = output_disagreements(path, images, names, graph.run(images)[0], "default")
    if count:
        warnings.warn(f"{path.name}: LiteRT's default (XNNPACK) kernels depart from its reference kernels at "
                      f"{count} of {images.shape[0]} x {graph.run(images[:1])[0].size} output bytes, by up to "
                      f"{largest}: " + "; ".join(lines[:4]))
    xnnpack = QuantizedGraph(path, kernels="xnnpack")
    count, largest, lines = output_disagreements(path, images, names, xnnpack.run(images)[0], "default")
    assert not count, f"{path.name}: {count} output bytes differ from XNNPACK's, by up to {largest}: " + "; ".join(lines)


# --- Google's uint8 files ---------------------------------------------------------------------

@pytest.fixture(scope="module", params=UINT8_FILES)
def uint8_case(request):
    path = shared_path(*UINT8_DIR, request.param)
    graph = QuantizedGraph(path)
    size = graph.tensor(graph.input_index).shape[1:3]
    names, images01 = photos(size)
    # LiteRT takes the uint8 pixels; preprocess gave them times float32(1/255), undone exactly.
    images = np.concatenate([np.rint(images01 * 255).astype(np.uint8), random_inputs(np.uint8, size)])
    return path, graph, images, names + [f"random{i}" for i in range(RANDOM_INPUTS)]


def test_uint8_every_op_equals_litert_reference(uint8_case):
    assert_every_op_equals_reference(uint8_case)


def test_uint8_every_op_equals_litert_optimized_kernels(uint8_case):
    assert_every_op_equals_optimized(uint8_case)


def test_uint8_outputs_equal_litert_xnnpack(uint8_case):
    assert_outputs_equal_xnnpack(uint8_case)


# --- the converter's full-integer int8 models -------------------------------------------------

INT8_CASES = [("mobilenet_v1", 160, 1001), ("mobilenet_v1", 97, 1001), ("mobilenet_v2", 96, 1001),
              ("mobilenet_v2", 160, 0), ("mobilenet_v2", 75, 1001), ("v2-hub", 96, 0)]


@pytest.fixture(scope="module", params=INT8_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'logits' if c[2] else 'features'}")
def int8_case(request, tmp_path_factory):
    pytest.importorskip("tensorflow")
    architecture, size, classes = request.param
    if architecture == "v2-hub":
        model = mnp.load(shared_path(*V2_HUB))
    else:
        model = mnp.build(architecture, 0.5, size, num_classes=classes, seed=WEIGHTS_SEED, backend="numpy")
    path = tmp_path_factory.mktemp("int8") / f"{architecture}_{size}.tflite"
    path.write_bytes(int8_tflite(model, (size, size)))
    graph = QuantizedGraph(path)
    q = graph.tensor(graph.input_index).quantization
    names, images01 = photos((size, size))
    # The network input is x * 2 - 1, quantized with the input's scale and zero point.
    network = images01 * np.float32(2.0) - np.float32(1.0)
    images = np.concatenate([iref.quantize(network, float(q.scale[0]), int(q.zero_point[0]), np.int8),
                             random_inputs(np.int8, (size, size))])
    return path, graph, images, names + [f"random{i}" for i in range(RANDOM_INPUTS)]


def test_int8_graph_is_what_the_converter_makes(int8_case):
    """Per-channel int8 weights, int8 activations, and V2's residual ADDs are in the graph."""
    path, graph, _, _ = int8_case
    ops = [OP_NAMES.get(op.opcode, op.opcode) for op in graph.sub.operators]
    convs = [op for op in graph.sub.operators if OP_NAMES.get(op.opcode) == "CONV_2D"]
    assert all(len(graph.tensor(op.inputs[1]).quantization.scale) == graph.tensor(op.inputs[1]).shape[0]
               for op in convs)
    assert graph.dtype(graph.input_index) == np.int8
    assert ops.count("ADD") == (10 if "v2" in path.name else 0)


def test_int8_every_op_equals_litert_reference(int8_case):
    assert_every_op_equals_reference(int8_case)


def test_int8_every_op_equals_litert_optimized_kernels(int8_case):
    assert_every_op_equals_optimized(int8_case)


def test_int8_outputs_equal_litert_xnnpack(int8_case):
    assert_outputs_equal_xnnpack(int8_case)


# --- int8 SOFTMAX: LiteRT's reference resolver aborts the process on it, so the optimized kernels judge

@pytest.fixture(scope="module")
def int8_softmax_model(tmp_path_factory):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    rng = np.random.default_rng(5)
    fn = tf.function(tf.nn.softmax).get_concrete_function(tf.TensorSpec([1, 37], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.uniform(-6, 6, (1, 37)).astype(np.float32)] for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("softmax") / "softmax.tflite"
    path.write_bytes(converter.convert())
    return path


def test_int8_softmax_equals_litert(int8_softmax_model, rng):
    graph = QuantizedGraph(int8_softmax_model)
    logits = [rng.integers(-128, 128, (1, 37)), np.full((1, 37), -128), np.arange(-128, 128, 7)[None, :37]]
    one_hot = np.full((1, 37), -128)
    one_hot[0, 5] = 127
    two_peaks = one_hot.copy()
    two_peaks[0, 30] = 127
    images = np.concatenate(logits + [one_hot, two_peaks]).astype(np.int8)
    for resolver in ("builtin", "default"):
        interpreter = litert(int8_softmax_model, resolver)
        theirs = np.concatenate([invoke(interpreter, images[n:n + 1]) for n in range(len(images))])
        assert np.array_equal(graph.run(images)[0], theirs), resolver


# --- a small graph of every other op: odd sizes, both strides, channels not multiples of 8 ------

@pytest.fixture(scope="module", params=[(13, 11), (8, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def small_graph(request, tmp_path_factory):
    """Float in and out (QUANTIZE, DEQUANTIZE), conv at stride 2 and 1, depthwise with RELU, an
    ADD of two differently scaled branches, AVERAGE_POOL_2D SAME and VALID, MEAN and a
    FULLY_CONNECTED layer, converted to int8 with per-channel weights."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    h, w = request.param
    rng = np.random.default_rng(23)
    k1, k2 = rng.normal(0, 0.4, (3, 3, 3, 5)), rng.normal(0, 0.4, (3, 3, 5, 1))
    k3, k4 = rng.normal(0, 0.3, (1, 1, 5, 13)), rng.normal(0, 0.9, (1, 1, 5, 13))
    dense, bias = rng.normal(0, 0.3, (13, 7)), rng.normal(0, 0.2, 7)

    def network(x):
        y = tf.nn.relu6(tf.nn.conv2d(x, k1.astype(np.float32), 2, "SAME"))
        y = tf.nn.relu(tf.nn.depthwise_conv2d(y, k2.astype(np.float32), [1, 1, 1, 1], "SAME"))
        y = tf.nn.conv2d(y, k3.astype(np.float32), 1, "SAME") + tf.nn.conv2d(y, k4.astype(np.float32), 1, "SAME")
        y = tf.nn.avg_pool2d(y, 3, 2, "SAME")
        y = tf.nn.avg_pool2d(y, 2, 1, "VALID") if min(y.shape[1:3]) >= 2 else y
        y = tf.reduce_mean(y, axis=[1, 2])
        return tf.matmul(y, dense.astype(np.float32)) + bias.astype(np.float32)

    fn = tf.function(network).get_concrete_function(tf.TensorSpec([1, h, w, 3], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)]
                                                for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path = tmp_path_factory.mktemp("small") / f"small_{h}x{w}.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(converter.convert())
    graph = QuantizedGraph(path)
    images = np.random.default_rng(INPUT_SEED).uniform(-1.2, 1.2, (3, h, w, 3)).astype(np.float32)
    return path, graph, images, ["random0", "random1", "random2"]


def test_small_graph_every_op_equals_litert_reference(small_graph):
    ops = {OP_NAMES.get(op.opcode, op.opcode) for op in small_graph[1].sub.operators}
    assert {"QUANTIZE", "DEQUANTIZE", "ADD", "AVERAGE_POOL_2D", "MEAN", 9}.issubset(ops)   # 9: FULLY_CONNECTED
    assert_every_op_equals_reference(small_graph)


def test_small_graph_every_op_equals_litert_optimized_kernels(small_graph):
    assert_every_op_equals_optimized(small_graph)


def test_small_graph_outputs_equal_litert_xnnpack(small_graph):
    assert_outputs_equal_xnnpack(small_graph)


# --- TF-Slim endpoints of a quantized graph ------------------------------------------------------

def test_uint8_endpoints_are_the_named_tensors_with_their_quantization(uint8_case):
    """Google's files name their tensors by TF-Slim scope: each endpoint must land on its own
    scope's tensor, and carry LiteRT's values, scale and zero point for it."""
    path, graph, images, _ = uint8_case
    tensors = graph.endpoint_tensors()
    assert list(tensors) == spec.build("mobilenet_v1", 0.5).endpoint_names()[:-2]   # no Logits/Predictions
    for name, k in tensors.items():
        scope = "Logits/AvgPool_1a" if name == "global_pool" else name
        assert f"/{scope}/" in graph.tensor(k).name.split(";")[0], (name, graph.tensor(k).name)
    interpreter = litert(path, "reference", preserve_all_tensors=True)
    invoke(interpreter, images[:1])
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for name, (values, scale, zero_point) in graph.endpoints(images[:1]).items():
        k = tensors[name]
        assert np.array_equal(values, interpreter.get_tensor(k)), name
        assert (np.float32(scale), zero_point) == (np.float32(details[k]["quantization"][0]),
                                                   details[k]["quantization"][1])


def test_int8_endpoints_have_the_spec_shapes(int8_case):
    """Every spec endpoint is found (V2's "layer_k" and "layer_k/output" name one tensor) with
    the shape spec.geometry gives."""
    path, graph, images, _ = int8_case
    architecture = "mobilenet_v2" if "v2" in path.name else "mobilenet_v1"
    size = graph.tensor(graph.input_index).shape[1:3]
    tensors = graph.endpoint_tensors()
    for g in spec.geometry(spec.build(architecture, 0.5), size):
        for name in g.layer.endpoints:
            assert graph.tensor(tensors[name]).shape == (1, *g.out_hw, g.layer.out_depth), name
    assert graph.tensor(tensors["global_pool"]).shape[-1] == g.layer.out_depth
    values = graph.endpoints(images[:1])
    assert set(values) == set(tensors)
    assert all(values[name][0].shape == graph.tensor(k).shape for name, k in tensors.items())


# --- the Numba integer kernels on real layers -------------------------------------------------

def check_numba_layers(case):
    """Every 1x1 conv and every depthwise conv of the graph, fed each of our three kernel sets'
    own input to that layer, gives that kernel set's output bytes with the Numba kernels."""
    from mobilenet_np.kernels import integer_depthwise as idw
    from mobilenet_np.kernels import integer_gemm as ig
    from mobilenet_np.kernels import integer_xnnpack as ixnn

    path, _, images, _ = case
    for kernels in KERNELS:
        graph = QuantizedGraph(path, kernels=kernels)
        seen = {graph.input_index: images[:2]}
        graph.run(images[:2], on_op=lambda i, op, y: seen.__setitem__(op.outputs[0], y))
        checked = {"pointwise": 0, "depthwise": 0}
        for op in graph.sub.operators:
            kind = {"CONV_2D": "pointwise", "DEPTHWISE_CONV_2D": "depthwise"}.get(OP_NAMES.get(op.opcode))
            w = graph.constant(op.inputs[1]) if kind else None
            if kind is None or (kind == "pointwise" and (w.shape[1:3] != (1, 1) or op.conv_options.stride_h != 1)):
                continue
            x, y = seen[op.inputs[0]], seen[op.outputs[0]]
            w_q = graph.tensor(op.inputs[1]).quantization
            in_scale, out_scale, out_zp = graph.scale(op.inputs[0]), graph.scale(op.outputs[0]), graph.zero_point(op.outputs[0])
            multiplier, shift = iref.conv_multipliers(in_scale, w_q.scale, out_scale, per_tensor=x.dtype == np.uint8)
            clamp = iref.activation_range(ACTIVATION_NAMES[op.conv_options.activation], out_scale, out_zp, y.dtype)
            c_out = w.shape[3] if kind == "depthwise" else w.shape[0]
            params = ig.requantization_params(graph.constant(op.inputs[2]), multiplier, shift, c_out)
            scales = ig.xnnpack_scales(ixnn.conv_scales(in_scale, w_q.scale, out_scale), c_out)
            if kind == "depthwise":
                stride = op.conv_options.stride_h
                (oh, top, bottom), (ow, left, right) = (spec.same_padding(s, w.shape[1], stride) for s in x.shape[1:3])
                got = idw.depthwise_conv2d(x, graph.zero_point(op.inputs[0]),
                                           idw.pack_depthwise(w.transpose(1, 2, 3, 0), w_q.zero_point), w.shape[1],
                                           stride, (top, bottom, left, right), (oh, ow), params, out_zp, clamp,
                                           np.empty(y.shape, y.dtype), kernels, scales)
            else:
                got = ig.pointwise_conv2d(x.reshape(-1, x.shape[-1]), graph.zero_point(op.inputs[0]),
                                          ig.pack_pairs(w[:, 0, 0, :].T, w_q.zero_point), params, c_out, out_zp,
                                          clamp, np.empty((x.size // x.shape[-1], c_out), y.dtype), kernels, scales)
            assert np.array_equal(got, y.reshape(got.shape)), f"{path.name} ({kernels}): {graph.tensor(op.outputs[0]).name}"
            checked[kind] += 1
        assert checked["pointwise"] >= 13 and checked["depthwise"] == 13 + 4 * ("v2" in path.name), (path.name, checked)


def test_integer_numba_kernels_on_every_uint8_layer(uint8_case):
    check_numba_layers(uint8_case)


def test_integer_numba_kernels_on_every_int8_layer(int8_case):
    check_numba_layers(int8_case)


# --- the whole graph on the Numba kernels ---------------------------------------------------------

def check_fast_graph(case):
    """FastQuantizedGraph gives every op's bytes of QuantizedGraph, for each kernel set."""
    from mobilenet_np.forward.quantized_engine import FastQuantizedGraph

    path, _, images, _ = case
    for kernels in KERNELS:
        want, got = {}, {}
        QuantizedGraph(path, kernels).run(images[:2], on_op=lambda i, op, y: want.__setitem__(i, y))
        fast = FastQuantizedGraph(path, kernels)
        fast.run(images[:2], on_op=lambda i, op, y: got.__setitem__(i, y))
        differ = [i for i in want if not np.array_equal(want[i], got[i]) or want[i].dtype != got[i].dtype]
        assert not differ, f"{path.name} ({kernels}): ops {differ[:5]} differ"
        check_planned_runs(fast, images, want)


def check_planned_runs(fast, images, want):
    """The plans' later runs (bound steps, shared buffers still holding another batch's values)
    give the same bytes, and the arrays a run returned stay as they were after the next run."""
    ops = fast.sub.operators
    every = [op.outputs[0] for op in ops]
    other = images[::-1][:2]
    for outputs in (None, every):
        first = fast.run(other, outputs=outputs)          # builds the plan on other images
        kept = [a.copy() for a in first]
        again = fast.run(images[:2], outputs=outputs)      # runs it
        expected = [want[len(ops) - 1]] if outputs is None else [want[i] for i in range(len(ops))]
        differ = [i for i, (a, b) in enumerate(zip(again, expected)) if not np.array_equal(a, b) or a.dtype != b.dtype]
        assert not differ, f"{fast.file} ({fast.kernels}, outputs={'all' if outputs else 'default'}): {differ[:5]} differ"
        assert all(np.array_equal(a, b) for a, b in zip(first, kept)), "a returned array was overwritten"
    check_compiled_calls(fast)


def check_compiled_calls(fast):
    """The later runs went through the plan's compiled calls: a kernel step is left as a step only when
    it reads the input or a new array (a NumPy op's result)."""
    from mobilenet_np.forward.quantized_steps import _Bound

    plans = [plan for plan in fast._local.plans.values() if not plan.fresh]
    assert plans and all(plan.calls for plan in plans)
    for plan in plans:
        # every kernel call is a row of the plan's program, run by one compiled call per run of rows between
        # NumPy ops (``run_program`` on the program's array)
        assert plan.program is not None and len(plan.runs) < len(plan.calls), (len(plan.runs), len(plan.calls))
        compiled = [args for fn, args in plan.runs if fn is not None]
        assert compiled and all(args[0] is plan.program.array for args in compiled), plan.runs
        new = {fast.input_index} | {write for i, op, step, reads, write, out in plan.steps if out is None}
        steps = [args for fn, args in plan.calls if fn is None]
        assert len(steps) < len(plan.calls), "no compiled call"
        for step, reads, write, out in steps:
            assert not isinstance(step, _Bound) or new.intersection(reads), (step, reads)
        check_kernel_kinds(fast, plan)


def check_kernel_kinds(fast, plan):
    """Where VNNI's dot4 is the instruction, each 3 x 3 depthwise op of 16k channels is a program row
    of the four-byte dot product kernel (``integer_depthwise4``); the
    others run the widening kernel (``integer_depthwise.depthwise_rows``)."""
    from mobilenet_np.kernels import integer_conv4 as ic4
    from mobilenet_np.kernels import integer_depthwise4 as idw4
    from mobilenet_np.kernels import integer_program as iprog
    from weights_tools import tflite_ops as tfl

    kinds = [int(k) for k in plan.program.array[:, iprog.KIND]]
    ours = [k for k in kinds if k in (iprog.DEPTHWISE, iprog.DEPTHWISE4)]
    ops = [op for op in fast.sub.operators if op.opcode == tfl.DEPTHWISE_CONV_2D]
    assert len(ours) == len(ops), (len(ours), len(ops))
    for kind, op in zip(ours, ops):
        c, k = fast.tensor(op.outputs[0]).shape[3], fast.tensor(op.inputs[1]).shape[1]
        quads = idw4.pack_taps(fast.packed[id(op)]["weights"], c) if idw4.usable(k, c) else None
        assert kind == (iprog.DEPTHWISE if quads is None else iprog.DEPTHWISE4)
    # the full convolutions (the stem): on the input bytes' four-byte dot products, split where their weights need it
    convs = [op for op in fast.sub.operators if op.opcode == tfl.CONV_2D and fast.tensor(op.inputs[1]).shape[1] > 1]
    ours = [k for k in kinds if k in (iprog.CONV, iprog.CONV_BYTES)]
    assert len(ours) == len(convs), (len(ours), len(convs))
    for kind, op in zip(ours, convs):
        w = fast.tensor(op.inputs[1]).shape
        quads = ic4.pack_quads(fast.packed[id(op)]["weights"], w[1], w[2] * w[3], w[0]) if ic4.usable() else None
        assert kind == (iprog.CONV if quads is None else iprog.CONV_BYTES)


def test_fast_graph_equals_the_reference_loop_uint8(uint8_case):
    check_fast_graph(uint8_case)


def test_fast_graph_equals_the_reference_loop_int8(int8_case):
    check_fast_graph(int8_case)


def test_fast_graph_equals_the_reference_loop_small(small_graph):
    check_fast_graph(small_graph)


def check_programs_on_any_threads(case):
    """A plan's program shared by 2 or 3 parts, with 1 or 2 Numba threads turning up (one thread then
    runs every part), gives the bytes of the plan run call by call (``PROGRAM`` off), every op's
    output, over two runs on other images (the input's addresses patched, the counters reused)."""
    import numba

    from mobilenet_np.forward import quantized_engine as qe

    path, _, images, _ = case
    threads = numba.get_num_threads()
    for kernels in KERNELS:
        fast = qe.FastQuantizedGraph(path, kernels)
        every = tuple(op.outputs[0] for op in fast.sub.operators)
        x = np.ascontiguousarray(images[:3])
        try:
            qe.PROGRAM = False
            want = fast.run(x, outputs=every)
        finally:
            qe.PROGRAM = True
        for numba_threads, parts in ((1, 2), (1, 3), (2, 2), (2, 3)):
            numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
            try:
                plan = qe._Plan(fast, every, fresh=False, parts=parts)
                plan.run(np.ascontiguousarray(images[[2, 0, 1]]), None)
                got = plan.run(x.copy(), None)
            finally:
                numba.set_num_threads(threads)
            assert plan.program is not None and plan.program.parts == parts
            differ = [i for i, (a, b) in enumerate(zip(want, got)) if not np.array_equal(a, b)]
            assert not differ, f"{path.name} ({kernels}, {numba_threads} threads, {parts} parts): ops {differ[:5]} differ"


def test_programs_on_any_threads_uint8(uint8_case):
    check_programs_on_any_threads(uint8_case)


def test_programs_on_any_threads_int8(int8_case):
    check_programs_on_any_threads(int8_case)


def test_programs_on_any_threads_small(small_graph):
    check_programs_on_any_threads(small_graph)
