"""Tests of the weight importers (TFLite, TF.js graph, Keras .h5) on the real files in ../shared,
and sanity tests of the peer runners that execute those files in LiteRT / TensorFlow / Keras.

Each importer is checked three ways: every tensor equals the source value read independently
(LiteRT's own tensor API, NumPy on the shard, h5py), the shapes follow SPEC.md's rules, and
(where TensorFlow is installed) a plain tf.nn forward pass built from the imported tensors
reproduces what the other engine computes from the original file, which pins down the
transposes and the bias/BatchNorm placement semantically.
"""

from __future__ import annotations

import json
import re
import shutil
import tracemalloc
import warnings

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_path
from mobilenet_np.errors import (ArchitectureError, CorruptFileError, MissingFileError,
                                 UnsupportedFormatError, WeightsError)
from weights_tools import tflite_schema as tflite_module
from weights_tools.keras_h5 import read_keras_h5
from weights_tools.tfjs import read_tfjs_graph
from weights_tools.tflite import read_tflite

FLOAT_025 = ("mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
QUANT_CORAL = ("mobilenet_v1_050_160", "tflite_uint8_quant", "mobilenet_v1_0.5_160_quant.coral.tflite")
QUANT_JEVOIS = ("mobilenet_v1_050_160", "tflite_uint8_quant", "mobilenet_v1_0.5_160_quant.jevois.tflite")
TFLITE_FILES = {"float025": FLOAT_025, "coral": QUANT_CORAL, "jevois": QUANT_JEVOIS}
TFJS_DIR = ("mobilenet_v2_050_96", "tfjs_graph_feature_vector")
KERAS_H5 = ("mobilenet_v1_025_160", "keras_h5", "mobilenet_160_0_25.h5")
BATCHNORM = ("gamma", "beta", "moving_mean", "moving_variance")

# SPEC.md §4.2: the 52 convs of MobileNet V2 0.5 (scope, weight shape).
V2_050_CONVS = [
    ("Conv", [3, 3, 3, 16]),
    ("expanded_conv/depthwise", [3, 3, 16, 1]), ("expanded_conv/project", [1, 1, 16, 8]),
    ("expanded_conv_1/expand", [1, 1, 8, 48]), ("expanded_conv_1/depthwise", [3, 3, 48, 1]),
    ("expanded_conv_1/project", [1, 1, 48, 16]),
    ("expanded_conv_2/expand", [1, 1, 16, 96]), ("expanded_conv_2/depthwise", [3, 3, 96, 1]),
    ("expanded_conv_2/project", [1, 1, 96, 16]),
    ("expanded_conv_3/expand", [1, 1, 16, 96]), ("expanded_conv_3/depthwise", [3, 3, 96, 1]),
    ("expanded_conv_3/project", [1, 1, 96, 16]),
    ("expanded_conv_4/expand", [1, 1, 16, 96]), ("expanded_conv_4/depthwise", [3, 3, 96, 1]),
    ("expanded_conv_4/project", [1, 1, 96, 16]),
    ("expanded_conv_5/expand", [1, 1, 16, 96]), ("expanded_conv_5/depthwise", [3, 3, 96, 1]),
    ("expanded_conv_5/project", [1, 1, 96, 16]),
    ("expanded_conv_6/expand", [1, 1, 16, 96]), ("expanded_conv_6/depthwise", [3, 3, 96, 1]),
    ("expanded_conv_6/project", [1, 1, 96, 32]),
    ("expanded_conv_7/expand", [1, 1, 32, 192]), ("expanded_conv_7/depthwise", [3, 3, 192, 1]),
    ("expanded_conv_7/project", [1, 1, 192, 32]),
    ("expanded_conv_8/expand", [1, 1, 32, 192]), ("expanded_conv_8/depthwise", [3, 3, 192, 1]),
    ("expanded_conv_8/project", [1, 1, 192, 32]),
    ("expanded_conv_9/expand", [1, 1, 32, 192]), ("expanded_conv_9/depthwise", [3, 3, 192, 1]),
    ("expanded_conv_9/project", [1, 1, 192, 32]),
    ("expanded_conv_10/expand", [1, 1, 32, 192]), ("expanded_conv_10/depthwise", [3, 3, 192, 1]),
    ("expanded_conv_10/project", [1, 1, 192, 48]),
    ("expanded_conv_11/expand", [1, 1, 48, 288]), ("expanded_conv_11/depthwise", [3, 3, 288, 1]),
    ("expanded_conv_11/project", [1, 1, 288, 48]),
    ("expanded_conv_12/expand", [1, 1, 48, 288]), ("expanded_conv_12/depthwise", [3, 3, 288, 1]),
    ("expanded_conv_12/project", [1, 1, 288, 48]),
    ("expanded_conv_13/expand", [1, 1, 48, 288]), ("expanded_conv_13/depthwise", [3, 3, 288, 1]),
    ("expanded_conv_13/project", [1, 1, 288, 80]),
    ("expanded_conv_14/expand", [1, 1, 80, 480]), ("expanded_conv_14/depthwise", [3, 3, 480, 1]),
    ("expanded_conv_14/project", [1, 1, 480, 80]),
    ("expanded_conv_15/expand", [1, 1, 80, 480]), ("expanded_conv_15/depthwise", [3, 3, 480, 1]),
    ("expanded_conv_15/project", [1, 1, 480, 80]),
    ("expanded_conv_16/expand", [1, 1, 80, 480]), ("expanded_conv_16/depthwise", [3, 3, 480, 1]),
    ("expanded_conv_16/project", [1, 1, 480, 160]),
    ("Conv_1", [1, 1, 160, 1280]),
]
V1_DEPTHWISE_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]      # SPEC.md §3.1


# --------------------------------------------------------------------------------------------
# Expected names and shapes (SPEC.md rules, written out independently of the readers)
# --------------------------------------------------------------------------------------------

def v1_expected_shapes(multiplier: float, classes: int, folded: bool) -> dict[str, tuple]:
    """SPEC.md §2.1: depth(d) = max(int(d * multiplier), 8), depthwise keeps its input depth."""
    def depth(d):
        return max(int(d * multiplier), 8)

    shapes = {}

    def layer(scope, variable, shape):
        shapes[f"MobilenetV1/{scope}/{variable}"] = tuple(shape)
        out = shape[2] if variable == "depthwise_weights" else shape[3]
        for extra in (["biases"] if folded else [f"BatchNorm/{v}" for v in BATCHNORM]):
            shapes[f"MobilenetV1/{scope}/{extra}"] = (out,)

    channels = depth(32)
    layer("Conv2d_0", "weights", [3, 3, 3, channels])
    for i, nominal in enumerate([64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024], start=1):
        layer(f"Conv2d_{i}_depthwise", "depthwise_weights", [3, 3, channels, 1])
        layer(f"Conv2d_{i}_pointwise", "weights", [1, 1, channels, depth(nominal)])
        channels = depth(nominal)
    shapes["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] = (1, 1, channels, classes)
    shapes["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] = (classes,)
    return shapes


def v2_050_expected_shapes() -> dict[str, tuple]:
    shapes = {}
    for scope, shape in V2_050_CONVS:
        variable = "depthwise_weights" if scope.endswith("depthwise") else "weights"
        shapes[f"MobilenetV2/{scope}/{variable}"] = tuple(shape)
        shapes[f"MobilenetV2/{scope}/biases"] = (shape[2] if variable == "depthwise_weights" else shape[3],)
    return shapes


def _shapes(source) -> dict[str, tuple]:
    return {name: value.shape for name, value in source.tensors.items()}


def _dequantize(raw: np.ndarray, details: dict) -> np.ndarray:
    """LiteRT's quantization parameters applied as TFLite documents them (float64, one rounding)."""
    q = details["quantization_parameters"]
    if raw.dtype == np.float32:
        return raw
    scale, zero_point = q["scales"].astype(np.float64), q["zero_points"].astype(np.float64)
    if scale.size > 1:
        shape = [1] * raw.ndim
        shape[q["quantized_dimension"]] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (scale * (raw.astype(np.float64) - zero_point)).astype(np.float32)


def _litert_conv_tensors(path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(op name, kernel, bias) of every conv in LiteRT's execution order, as LiteRT stores them."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    convs = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            kernel, bias = (details[i] for i in op["inputs"][1:3])
            convs.append((op["op_name"], _dequantize(interpreter.get_tensor(kernel["index"]), kernel),
                          _dequantize(interpreter.get_tensor(bias["index"]), bias)))
    return convs


def _v1_scopes() -> list[str]:
    return (["Conv2d_0"] + [f"Conv2d_{i}_{kind}" for i in range(1, 14) for kind in ("depthwise", "pointwise")]
            + ["Logits/Conv2d_1c_1x1"])


def _image(name: str, size: int) -> np.ndarray:
    """A shared test image, RGB uint8, resized to size x size with PIL bilinear (no crop)."""
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(shared_path("images", name)) as image:
        return np.asarray(image.convert("RGB").resize((size, size), image_module.BILINEAR))


def _labels() -> list[str]:
    return shared_path("labels", "imagenet_labels_1001.txt").read_text().splitlines()


# --------------------------------------------------------------------------------------------
# An independent TensorFlow forward pass from imported tensors (tf.nn ops, SAME padding)
# --------------------------------------------------------------------------------------------

def _layers(net: str):
    """(scope, depthwise, stride, relu6) in execution order, from SPEC.md §3.2 / §4.2."""
    if net == "MobilenetV1":
        yield "Conv2d_0", False, 2, True
        for i, stride in enumerate(V1_DEPTHWISE_STRIDES, start=1):
            yield f"Conv2d_{i}_depthwise", True, stride, True
            yield f"Conv2d_{i}_pointwise", False, 1, True
        return
    yield "Conv", False, 2, True
    strided = {"expanded_conv_1", "expanded_conv_3", "expanded_conv_6", "expanded_conv_13"}
    for scope, _ in V2_050_CONVS[1:-1]:
        block, kind = scope.split("/")
        yield scope, kind == "depthwise", 2 if kind == "depthwise" and block in strided else 1, kind != "project"
    yield "Conv_1", False, 1, True


def _tf_network(tf, tensors: dict[str, np.ndarray], net: str, x):
    """Pooled features, then logits if the tensors have them; BatchNorm folded or not. Plain
    tf.nn ops under TF-Slim name scopes, so it also traces into a graph for the TFLite converter."""
    block_input = x
    for scope, depthwise, stride, relu6 in _layers(net):
        name = f"{net}/{scope}"
        with tf.name_scope(scope):
            if scope.endswith("/expand") or scope == "expanded_conv/depthwise":
                block_input = x
            if depthwise:
                x = tf.nn.depthwise_conv2d(x, tensors[f"{name}/depthwise_weights"], [1, stride, stride, 1], "SAME")
            else:
                x = tf.nn.conv2d(x, tensors[f"{name}/weights"], stride, "SAME")
            if f"{name}/biases" in tensors:
                x = tf.nn.bias_add(x, tensors[f"{name}/biases"])
            else:                                       # TF's inference BatchNorm order, eps 1e-3
                bn = {v: tensors[f"{name}/BatchNorm/{v}"] for v in BATCHNORM}
                x = (x - bn["moving_mean"]) * (bn["gamma"] * tf.math.rsqrt(bn["moving_variance"] + 1e-3)) + bn["beta"]
            if relu6:
                x = tf.nn.relu6(x)
            elif x.shape == block_input.shape:          # V2 residual: stride 1 and equal depth
                x = x + block_input
    x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    logits = f"{net}/Logits/Conv2d_1c_1x1"
    if f"{logits}/weights" in tensors:
        x = tf.nn.conv2d(x, tensors[f"{logits}/weights"], 1, "SAME") + tensors[f"{logits}/biases"]
    return tf.squeeze(x, axis=[1, 2])


def _tf_forward(tensors: dict[str, np.ndarray], net: str, images: np.ndarray) -> np.ndarray:
    tf = pytest.importorskip("tensorflow")
    return _tf_network(tf, tensors, net, tf.constant(images, tf.float32)).numpy()


# --------------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", sorted(TFLITE_FILES))
def test_tflite_tensors_equal_litert_tensors(which):
    path = shared_path("weights", *TFLITE_FILES[which])
    source = read_tflite(path)
    convs = _litert_conv_tensors(path)
    scopes = _v1_scopes()
    assert len(convs) == len(scopes) == 28
    for scope, (op_name, kernel, bias) in zip(scopes, convs, strict=True):
        name = f"MobilenetV1/{scope}"
        if op_name == "DEPTHWISE_CONV_2D":             # [1, kh, kw, C] -> [kh, kw, C, 1]
            np.testing.assert_array_equal(source.tensors[f"{name}/depthwise_weights"], kernel[0][..., None])
        else:                                           # OHWI -> HWIO (logits [K,1,1,C] -> [1,1,C,K])
            np.testing.assert_array_equal(source.tensors[f"{name}/weights"], np.transpose(kernel, (1, 2, 3, 0)))
        np.testing.assert_array_equal(source.tensors[f"{name}/biases"], bias)
    assert len(source.tensors) == 2 * len(scopes)
    assert source.batchnorm_folded and source.source_format == "tflite"
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in source.tensors.values())


def test_tflite_v1_025_shapes():
    source = read_tflite(shared_path("weights", *FLOAT_025))
    assert _shapes(source) == v1_expected_shapes(0.25, 1001, folded=True)
    assert sum(name.endswith("weights") for name in source.tensors) == 28      # 27 convs + logits
    assert not any("dequantized" in note for note in source.notes)


@pytest.mark.parametrize("which, scale", [("coral", 1 / 128), ("jevois", 1 / 127.5)])
def test_tflite_uint8_v1_050_shapes_and_notes(which, scale):
    source = read_tflite(shared_path("weights", *TFLITE_FILES[which]))
    assert _shapes(source) == v1_expected_shapes(0.5, 1001, folded=True)
    assert any(note.startswith("dequantized uint8 weights (QAT model)") for note in source.notes)
    [input_note] = [note for note in source.notes if note.startswith("model input")]
    assert f"scale {float(np.float32(scale))!r}" in input_note and "zero point 128" in input_note


def test_tflite_jevois_relu6_comes_from_the_uint8_range():
    source = read_tflite(shared_path("weights", *QUANT_JEVOIS))
    assert any("implied by their output quantization range [0, 6]" in note for note in source.notes)


@pytest.mark.parametrize("cut", [0, 7, 8, 24, 1000, "third", "half", "end-17", "end-1"])
def test_truncated_tflite_is_corrupt(tmp_path, cut):
    data = shared_path("weights", *FLOAT_025).read_bytes()
    size = len(data)
    n = {"third": size // 3, "half": size // 2, "end-17": size - 17, "end-1": size - 1}.get(cut, cut)
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(data[:n])
    with pytest.raises(CorruptFileError, match="cut.tflite"):
        read_tflite(bad)


@pytest.mark.parametrize("other", [KERAS_H5, (*TFJS_DIR, "model.json")])
def test_non_tflite_file_is_refused(other):
    path = shared_path("weights", *other)
    with pytest.raises(UnsupportedFormatError, match=f"{path.name}.*not a TFLite file"):
        read_tflite(path)


def test_missing_tflite(tmp_path):
    with pytest.raises(MissingFileError, match="absent.tflite"):
        read_tflite(tmp_path / "absent.tflite")


def test_tflite_of_another_network_is_refused(tmp_path):
    """Cutting the op list to its first three operators leaves a valid file of no MobileNet."""
    sg = pytest.importorskip("ai_edge_litert.schema_py_generated")
    flatbuffers = pytest.importorskip("flatbuffers")
    model = sg.ModelT.InitFromPackedBuf(shared_path("weights", *FLOAT_025).read_bytes(), 0)
    model.subgraphs[0].operators = model.subgraphs[0].operators[:3]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "short.tflite"
    bad.write_bytes(builder.Output())
    with pytest.raises(ArchitectureError, match="short.tflite.*conv sequence"):
        read_tflite(bad)


def test_tflite_mutations_raise_only_weights_errors(tmp_path):
    """Flipped, truncated and spliced real files: read_tflite succeeds or raises a WeightsError,
    every byte slice it takes fits in the file, and its memory stays within a small multiple of
    the file size (no allocation sized by a corrupted length field)."""
    blobs = [shared_path("weights", *parts).read_bytes() for parts in TFLITE_FILES.values()]
    original = tflite_module._checked_slice
    requests = []

    def recording_slice(data, offset, length, what, file):
        view = original(data, offset, length, what, file)
        requests.append((length, len(data)))
        return view

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(draw):
        data = bytearray(blobs[draw.draw(st.integers(0, len(blobs) - 1), label="file")])
        # The converters put the tables (names, shapes, offsets) in the last few kB, the header
        # first and the weight bytes in between: aim at all three.
        position = st.one_of(st.integers(0, 4095), st.integers(len(data) - 16384, len(data) - 1),
                             st.integers(0, len(data) - 1))
        kind = draw.draw(st.sampled_from(["flip", "truncate", "splice"]), label="kind")
        if kind == "flip":
            for _ in range(draw.draw(st.integers(1, 4), label="flips")):
                data[draw.draw(position)] ^= draw.draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[draw.draw(position):]
        else:
            source, length = draw.draw(position), draw.draw(st.integers(1, 64))
            target = draw.draw(position)
            data[target:target + length] = data[source:source + length]
        path = tmp_path / "mutated.tflite"
        path.write_bytes(bytes(data))
        requests.clear()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            read_tflite(path)
        except WeightsError as err:
            assert "mutated.tflite" in str(err)
        peak = tracemalloc.get_traced_memory()[1] - before
        assert all(length <= size for length, size in requests)
        assert peak < 24 * len(data) + (1 << 20)

    tflite_module._checked_slice = recording_slice
    tracemalloc.start()
    try:
        check()
    finally:
        tracemalloc.stop()
        tflite_module._checked_slice = original


def test_tflite_v2_written_by_the_tf_converter(tmp_path):
    """A V2 .tflite made by TensorFlow's converter from the TF.js weights (hub input scaling
    included) reads back as exactly those weights, recognised as V2 by its op structure."""
    tf = pytest.importorskip("tensorflow")
    tensors = read_tfjs_graph(shared_path("weights", *TFJS_DIR)).tensors

    def forward(images):
        x = images * 2.0 - 1.0                          # the hub module's input conversion
        with tf.name_scope("MobilenetV2"):
            return _tf_network(tf, tensors, "MobilenetV2", x)

    function = tf.function(forward, input_signature=[tf.TensorSpec([1, 96, 96, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    path = tmp_path / "v2_from_tfjs.tflite"
    path.write_bytes(converter.convert())
    source = read_tflite(path)
    assert source.tensors.keys() == tensors.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(source.tensors[name], value, err_msg=name)
    assert any("MobilenetV2 recognised" in note and "10 residual ADDs" in note for note in source.notes)
    assert any("MUL 2.0, SUB 1.0" in note for note in source.notes)


def test_tflite_float_weights_drive_tf_to_litert_logits():
    pytest.importorskip("tensorflow")
    from peer_runners import run_tflite

    path = shared_path("weights", *FLOAT_025)
    images = np.stack([_image("coral_parrot.jpg", 160), _image("coral_cat.bmp", 160)]).astype(np.float32) / 127.5 - 1
    ours = _tf_forward(read_tflite(path).tensors, "MobilenetV1", images)
    litert = run_tflite(path, images, tensor_name="MobilenetV1/Logits/SpatialSqueeze")
    np.testing.assert_allclose(ours, litert, rtol=0, atol=2e-4)


@pytest.mark.parametrize("which, scale", [("coral", 1 / 128), ("jevois", 1 / 127.5)])
def test_tflite_dequantized_weights_agree_with_litert_top1(which, scale):
    """Float execution of the dequantized weights gives the quantized model's top-1."""
    pytest.importorskip("tensorflow")
    from peer_runners import run_tflite

    path = shared_path("weights", *TFLITE_FILES[which])
    source = read_tflite(path)
    pixels = np.stack([_image("coral_parrot.jpg", 160), _image("coral_cat.bmp", 160)])
    ours = _tf_forward(source.tensors, "MobilenetV1", scale * (pixels.astype(np.float32) - 128))
    litert = run_tflite(path, pixels)
    np.testing.assert_array_equal(ours.argmax(axis=1), litert.argmax(axis=1))


# --------------------------------------------------------------------------------------------
# TF.js graph
# --------------------------------------------------------------------------------------------

def _bin_by_manifest(model_dir) -> dict[str, np.ndarray]:
    manifest = json.loads((model_dir / "model.json").read_text())["weightsManifest"]
    values = {}
    for group in manifest:
        data = np.concatenate([np.fromfile(model_dir / p, dtype="<f4") for p in group["paths"]])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"]))
            values[spec["name"]] = data[offset:offset + count].reshape(spec["shape"])
            offset += count
        assert offset == data.size
    return values


def test_tfjs_tensors_equal_the_shard():
    model_dir = shared_path("weights", *TFJS_DIR)
    source = read_tfjs_graph(model_dir)
    stored = _bin_by_manifest(model_dir)
    expected = {}
    for name, value in stored.items():                 # name-based map, independent of the reader's graph walk
        if name.startswith("module/"):
            expected[name[len("module/"):]] = value
        elif name.endswith("_bn_offset"):
            scope = name[len("module_apply_default/"):].rsplit("/", 1)[0]
            expected[f"{scope}/biases"] = value
    assert source.tensors.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(source.tensors[name], value, err_msg=name)
    assert set(source.ignored) == {"module_apply_default/hub_input/Mul/y", "module_apply_default/hub_input/Sub/y"}
    assert source.batchnorm_folded and source.source_format == "tfjs-graph"


def test_tfjs_v2_050_shapes_are_spec_4_2():
    source = read_tfjs_graph(shared_path("weights", *TFJS_DIR) / "model.json")
    assert _shapes(source) == v2_050_expected_shapes()
    assert source.tensors["MobilenetV2/Conv_1/weights"].shape == (1, 1, 160, 1280)
    assert sum(name.endswith("weights") for name in source.tensors) == 52
    assert not any("Logits" in name for name in source.tensors)


@pytest.fixture
def tfjs_copy(tmp_path):
    """A writable copy of the TF.js model directory."""
    target = tmp_path / "tfjs"
    shutil.copytree(shared_path("weights", *TFJS_DIR), target)
    return target


def test_tfjs_missing_shard(tfjs_copy):
    (tfjs_copy / "group1-shard1of1.bin").unlink()
    with pytest.raises(MissingFileError, match="group1-shard1of1.bin"):
        read_tfjs_graph(tfjs_copy)


def test_tfjs_shard_one_byte_short(tfjs_copy):
    shard = tfjs_copy / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(CorruptFileError, match="group1-shard1of1.bin.*2713639 bytes"):
        read_tfjs_graph(tfjs_copy)


def test_tfjs_bad_json(tfjs_copy):
    model_json = tfjs_copy / "model.json"
    model_json.write_text(model_json.read_text()[:-10])
    with pytest.raises(CorruptFileError, match="model.json.*not valid JSON"):
        read_tfjs_graph(tfjs_copy)


def test_tfjs_unmapped_weight_is_named(tfjs_copy):
    model_json = tfjs_copy / "model.json"
    model = json.loads(model_json.read_text())
    model["weightsManifest"][0]["weights"].append({"name": "module/extra/thing", "shape": [1], "dtype": "float32"})
    model["modelTopology"]["node"].append({"name": "module/extra/thing", "op": "Const", "attr": {
        "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "1"}]}}}}})
    model_json.write_text(json.dumps(model))
    with (tfjs_copy / "group1-shard1of1.bin").open("ab") as shard:
        shard.write(np.float32(0).tobytes())
    with pytest.raises(ArchitectureError, match="model.json.*module/extra/thing"):
        read_tfjs_graph(tfjs_copy)


def test_tfjs_uint8_quantized_manifest(tfjs_copy):
    """The manifest's quantization form decodes as TF.js does: q * scale + min."""
    model_json = tfjs_copy / "model.json"
    model = json.loads(model_json.read_text())
    original = _bin_by_manifest(tfjs_copy)
    chunks = []
    for spec in model["weightsManifest"][0]["weights"]:
        value = original[spec["name"]].astype(np.float64)
        lo, hi = value.min(), value.max()
        scale = (hi - lo) / 255 or 1.0
        spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
        chunks.append(np.round((value - lo) / scale).astype(np.uint8).tobytes())
    (tfjs_copy / "group1-shard1of1.bin").write_bytes(b"".join(chunks))
    model_json.write_text(json.dumps(model))
    source = read_tfjs_graph(tfjs_copy)
    weights = model["weightsManifest"][0]["weights"]
    spec = next(s for s in weights if s["name"] == "module/MobilenetV2/Conv_1/weights")
    q = np.frombuffer(chunks[weights.index(spec)], np.uint8).reshape(spec["shape"])
    expected = (q * spec["quantization"]["scale"] + spec["quantization"]["min"]).astype(np.float32)
    np.testing.assert_array_equal(source.tensors["MobilenetV2/Conv_1/weights"], expected)


def test_tfjs_weights_drive_tf_to_the_graphs_output():
    pytest.importorskip("tensorflow")
    from peer_runners import run_tfjs_graph_in_tf

    model_dir = shared_path("weights", *TFJS_DIR)
    images = np.stack([_image("grace_hopper.jpg", 96), _image("coral_parrot.jpg", 96)]).astype(np.float32) / 255
    ours = _tf_forward(read_tfjs_graph(model_dir).tensors, "MobilenetV2", images * 2 - 1)
    np.testing.assert_allclose(ours, run_tfjs_graph_in_tf(model_dir, images), rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------
# Keras .h5
# --------------------------------------------------------------------------------------------

def test_keras_h5_tensors_equal_h5py():
    path = shared_path("weights", *KERAS_H5)
    source = read_keras_h5(path)
    variables = {"depthwise_kernel": "depthwise_weights", "kernel": "weights", "bias": "biases"}
    stored = {}
    with h5py.File(path, "r") as f:
        f["model_weights"].visititems(
            lambda key, item: stored.__setitem__(key, item[()]) if isinstance(item, h5py.Dataset) else None)
    assert len(stored) == len(source.tensors) == 137
    for key, value in stored.items():
        layer, _, variable = key.split("/")
        variable = variable.removesuffix(":0")
        unit = re.fullmatch(r"conv_(dw|pw)_(\d+)(_bn)?", layer)
        if unit:
            scope = f"Conv2d_{unit[2]}_{'depthwise' if unit[1] == 'dw' else 'pointwise'}"
        else:
            scope = {"conv1": "Conv2d_0", "conv1_bn": "Conv2d_0", "conv_preds": "Logits/Conv2d_1c_1x1"}[layer]
        if layer.endswith("_bn"):
            name = f"MobilenetV1/{scope}/BatchNorm/{variable}"
        else:
            name = f"MobilenetV1/{scope}/{variables[variable]}"
        np.testing.assert_array_equal(source.tensors[name], value, err_msg=key)


def test_keras_h5_shapes_and_notes():
    source = read_keras_h5(shared_path("weights", *KERAS_H5))
    assert _shapes(source) == v1_expected_shapes(0.25, 1000, folded=False)
    assert not source.batchnorm_folded and source.source_format == "keras-h5"
    assert any("1000 classes and no background class" in note for note in source.notes)


def test_keras_h5_unmapped_dataset_is_named(tmp_path):
    path = tmp_path / "extra.h5"
    shutil.copy(shared_path("weights", *KERAS_H5), path)
    with h5py.File(path, "r+") as f:
        f["model_weights"].create_dataset("dense_9/dense_9/kernel:0", data=np.zeros((2, 2), np.float32))
    with pytest.raises(ArchitectureError, match="extra.h5.*dense_9/dense_9/kernel:0"):
        read_keras_h5(path)


def test_keras_h5_not_hdf5():
    path = shared_path("weights", *FLOAT_025)
    with pytest.raises(UnsupportedFormatError, match="jevois.tflite.*not an HDF5 file"):
        read_keras_h5(path)


# Keras 3's legacy .h5 writer calls np.array() on TF variables, which NumPy 2 warns about.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras3_mobilenet_v2_files(tmp_path):
    """keras.applications.MobileNetV2 saved by Keras 3: the legacy .h5 maps onto SPEC.md §4.2
    names (plus unfolded BatchNorm and a 1000-class head); a .weights.h5 file is refused."""
    keras = pytest.importorskip("keras")
    model = keras.applications.MobileNetV2(alpha=0.5, input_shape=(96, 96, 3), weights=None)
    model.save(tmp_path / "v2.h5")
    source = read_keras_h5(tmp_path / "v2.h5")
    expected = {name: shape for name, shape in v2_050_expected_shapes().items() if not name.endswith("biases")}
    for name, shape in list(expected.items()):
        scope = name.rsplit("/", 1)[0]
        expected.update({f"{scope}/BatchNorm/{v}": (shape[2] if "depthwise" in name else shape[3],) for v in BATCHNORM})
    expected.update({"MobilenetV2/Logits/Conv2d_1c_1x1/weights": (1, 1, 1280, 1000),
                     "MobilenetV2/Logits/Conv2d_1c_1x1/biases": (1000,)})
    assert _shapes(source) == expected
    np.testing.assert_array_equal(source.tensors["MobilenetV2/Logits/Conv2d_1c_1x1/weights"][0, 0],
                                  model.get_layer("predictions").kernel.numpy())
    model.save_weights(tmp_path / "v2.weights.h5")
    with pytest.raises(UnsupportedFormatError, match="v2.weights.h5.*Keras 3"):
        read_keras_h5(tmp_path / "v2.weights.h5")


def test_keras_h5_weights_drive_tf_to_keras_output():
    pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from peer_runners import keras_mobilenet_v1

    path = shared_path("weights", *KERAS_H5)
    images = np.stack([_image("coral_parrot.jpg", 160), _image("coral_cat.bmp", 160)]).astype(np.float32) / 127.5 - 1
    ours = tf.nn.softmax(_tf_forward(read_keras_h5(path).tensors, "MobilenetV1", images)).numpy()
    theirs = keras_mobilenet_v1(0.25, 160, path).predict(images, verbose=0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Peer runners: each engine on its own gives sensible answers
# --------------------------------------------------------------------------------------------

def test_runner_tflite_float_parrot_is_macaw():
    pytest.importorskip("ai_edge_litert")
    from peer_runners import run_tflite

    image = _image("coral_parrot.jpg", 160).astype(np.float32) / 127.5 - 1
    probabilities = run_tflite(shared_path("weights", *FLOAT_025), image[None])
    assert probabilities.shape == (1, 1001)
    assert _labels()[probabilities[0].argmax()] == "macaw" == _labels()[89]
    assert abs(probabilities.sum() - 1) < 1e-4


@pytest.mark.parametrize("which", ["coral", "jevois"])
def test_runner_tflite_uint8_parrot_is_macaw(which):
    pytest.importorskip("ai_edge_litert")
    from peer_runners import run_tflite

    path = shared_path("weights", *TFLITE_FILES[which])
    probabilities = run_tflite(path, _image("coral_parrot.jpg", 160)[None])
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, 1001)
    assert _labels()[probabilities[0].argmax()] == "macaw"
    with pytest.raises(ValueError, match="uint8"):
        run_tflite(path, np.zeros((1, 160, 160, 3), np.float32))


def test_runner_tflite_batch_and_logits_agree_with_softmax():
    pytest.importorskip("ai_edge_litert")
    from peer_runners import run_tflite

    path = shared_path("weights", *FLOAT_025)
    images = np.stack([_image("coral_parrot.jpg", 160), _image("coral_cat.bmp", 160)]).astype(np.float32) / 127.5 - 1
    probabilities = run_tflite(path, images)
    logits = run_tflite(path, images, tensor_name="MobilenetV1/Logits/SpatialSqueeze")
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, softmax / softmax.sum(axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(probabilities[:1], run_tflite(path, images[:1]), atol=0)


def test_runner_tfjs_graph_grace_hopper():
    """Figures of the independent run recorded in SOURCES.md ("Verification done")."""
    pytest.importorskip("tensorflow")
    from peer_runners import run_tfjs_graph_in_tf

    features = run_tfjs_graph_in_tf(shared_path("weights", *TFJS_DIR),
                                    _image("grace_hopper.jpg", 96)[None].astype(np.float32) / 255)
    assert features.shape == (1, 1280)
    assert abs(np.linalg.norm(features) - 28.377) < 1e-3
    assert features[0].argmax() == 279 and abs(features.max() - 5.4876) < 1e-4
    np.testing.assert_allclose(features[0, :8], [0.0538, 0.1881, 0, 0.2922, 0.0767, 0, 0, 0], atol=1e-4)


def test_runner_keras_parrot_is_macaw():
    pytest.importorskip("keras")
    from peer_runners import keras_mobilenet_v1

    model = keras_mobilenet_v1(0.25, 160, shared_path("weights", *KERAS_H5))
    image = _image("coral_parrot.jpg", 160).astype(np.float32) / 127.5 - 1
    probabilities = model.predict(image[None], verbose=0)
    assert probabilities.shape == (1, 1000)
    assert _labels()[probabilities[0].argmax() + 1] == "macaw"       # Keras has no background class


def test_runner_warnings_are_quiet():
    """run_tflite asks LiteRT to keep intermediate tensors without its debugging warning."""
    pytest.importorskip("ai_edge_litert")
    from peer_runners import run_tflite

    image = np.zeros((1, 160, 160, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_tflite(shared_path("weights", *FLOAT_025), image, tensor_name="MobilenetV1/Logits/SpatialSqueeze")
