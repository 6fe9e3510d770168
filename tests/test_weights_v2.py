"""Weights format version 2 (quantized models) and the quantized model of ``mnp.load``.

The version-2 file's integer graph (``integer_graph.from_weights``, built from the spec) must
compute, op by op and byte for byte, what ``QuantizedGraph`` computes on the original .tflite
(itself tested against LiteRT in test_quantized_forward.py): for Google's uint8 Coral and
jevois copies of V1 0.5/160 and for a converter int8 V2 with residual adds and a softmax.
Then: a write -> read round trip, one clear error for every malformed file we guard against,
the version-1-only reader's upgrade message, and the model API of a quantized model.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import mobilenet_np as mnp
from conftest import shared_path
from mobilenet_np import weights_file
from mobilenet_np import weights_file_v2 as v2
from mobilenet_np.errors import ArchitectureError, CorruptFileError, UnsupportedFormatError
from mobilenet_np.forward import integer_graph as ig
from mobilenet_np.forward.quantized import KERNELS, QuantizedGraph
from mobilenet_np.kernels import integer_reference as iref
from mobilenet_np.preprocess import preprocess
from weights_tools.cli import main as weights_tools_main
from weights_tools.convert import convert

UINT8_DIR = ("weights", "mobilenet_v1_050_160", "tflite_uint8_quant")
UINT8_FILES = ("mobilenet_v1_0.5_160_quant.coral.tflite", "mobilenet_v1_0.5_160_quant.jevois.tflite")
INT8_MODEL = ("mobilenet_v2", 75, 1001)       # an odd size, residual adds, logits and softmax
WEIGHTS_SEED, INPUT_SEED = 17, 170


def inputs(dtype, size, photos: int = 3, random: int = 2) -> np.ndarray:
    """A few shared photos as the input type takes them (uint8 pixels, or x * 2 - 1 quantized
    to int8 with a plain scale), and seeded random inputs over the whole type range."""
    folder = shared_path("images")
    files = sorted(p for p in folder.iterdir() if p.is_file())[:photos]
    images01 = np.stack([preprocess(p, size, draft=False) for p in files])
    if dtype == np.uint8:
        real = np.rint(images01 * 255).astype(np.uint8)
    else:
        real = iref.quantize(images01 * np.float32(2) - np.float32(1), 1 / 128, 0, np.int8)
    info = np.iinfo(dtype)
    noise = np.random.default_rng(INPUT_SEED).integers(info.min, info.max, (random, *size, 3), endpoint=True)
    return np.concatenate([real, noise.astype(dtype)])


@pytest.fixture(scope="module", params=UINT8_FILES + ("int8",))
def case(request, tmp_path_factory):
    """(the .tflite, its version-2 file, inputs for it)."""
    folder = tmp_path_factory.mktemp("v2")
    if request.param == "int8":
        pytest.importorskip("tensorflow", reason="the TFLite converter makes the int8 model (parity extra)")
        from int8_models import int8_tflite
        architecture, size, classes = INT8_MODEL
        model = mnp.build(architecture, 0.5, size, num_classes=classes, seed=WEIGHTS_SEED, backend="numpy")
        tflite = folder / f"{architecture}_{size}_int8.tflite"
        tflite.write_bytes(int8_tflite(model, (size, size), softmax=True))
    else:
        tflite = shared_path(*UINT8_DIR, request.param)
    out = folder / (tflite.stem + ".h5")
    convert(tflite, out)
    graph = QuantizedGraph(tflite)
    x = inputs(graph.dtype(graph.input_index), graph.tensor(graph.input_index).shape[1:3])
    return tflite, out, x


def every_op(graph: QuantizedGraph, x) -> dict[int, np.ndarray]:
    out = {}
    graph.run(x, on_op=lambda i, op, y: out.__setitem__(i, y))
    return out


# --- the version-2 file computes what the .tflite computes ------------------------------------

@pytest.mark.parametrize("kernels", KERNELS)
def test_v2_file_graph_equals_the_tflite_graph_op_by_op(case, kernels):
    tflite, path, x = case
    theirs, ours = QuantizedGraph(tflite, kernels), QuantizedGraph(path, kernels)
    same = {ig.tfl.SQUEEZE: ig.tfl.RESHAPE}                  # jevois squeezes the logits: the same bytes
    assert [op.opcode for op in ours.sub.operators] == [same.get(op.opcode, op.opcode) for op in theirs.sub.operators]
    want, got = every_op(theirs, x), every_op(ours, x)
    for i, (a, b) in enumerate(zip(theirs.sub.operators, ours.sub.operators)):
        k, j = a.outputs[0], b.outputs[0]
        assert (ours.scale(j), ours.zero_point(j), ours.dtype(j)) == (theirs.scale(k), theirs.zero_point(k),
                                                                      theirs.dtype(k)), i
        assert got[i].dtype == want[i].dtype and np.array_equal(got[i], want[i]), \
            f"op {i} ({theirs.tensor(k).name[:50]}): {int((got[i] != want[i]).sum())} bytes differ"


def test_v2_file_endpoints_and_outputs_equal_the_tflite(case):
    tflite, path, x = case
    theirs, ours = QuantizedGraph(tflite), QuantizedGraph(path)
    want, got = theirs.endpoints(x), ours.endpoints(x)
    assert list(got) == list(want) and len(got) > 20
    for name in want:
        assert got[name][1:] == want[name][1:], name
        assert np.array_equal(got[name][0], want[name][0]), name
    for a, b in zip(theirs.run(x), ours.run(x), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_the_fast_graph_of_a_v2_file_is_bit_identical(case):
    from mobilenet_np.forward.quantized_engine import FastQuantizedGraph
    _, path, x = case
    want, got = every_op(QuantizedGraph(path), x[:2]), every_op(FastQuantizedGraph(path), x[:2])
    assert all(np.array_equal(got[i], want[i]) for i in want)


def test_v2_graph_at_another_input_size_runs_the_whole_map_pool(case):
    """from_weights builds the graph for any input size: the global pool covers the map."""
    _, path, _ = case
    qw = weights_file.read(path)
    graph = QuantizedGraph(ig.from_weights(qw, (97, 65)))
    x = inputs(graph.dtype(graph.input_index), (97, 65), photos=1, random=1)
    pooled = graph.endpoints(x)["global_pool"][0]
    assert pooled.reshape(2, -1).shape == (2, qw.architecture.num_features)


# --- writing and reading ------------------------------------------------------------------------

def test_write_read_round_trip(case, tmp_path):
    _, path, _ = case
    qw = weights_file.read(path)
    assert isinstance(qw, v2.QuantizedWeightsFile) and qw.attrs["format_version"] == 2
    again_path = tmp_path / "again.h5"
    weights_file.write_quantized(again_path, qw.tensors, qw.activations, qw.attrs)
    again = weights_file.read(again_path)
    assert again.attrs == qw.attrs and again.activations == qw.activations
    assert set(again.tensors) == set(qw.tensors)
    for name, t in qw.tensors.items():
        u = again.tensors[name]
        assert u.values.dtype == t.values.dtype and np.array_equal(u.values, t.values), name
        assert np.array_equal(u.scale, t.scale) and np.array_equal(u.zero_point, t.zero_point), name
        assert (u.quantized_axis, u.fused_activation) == (t.quantized_axis, t.fused_activation), name
    with h5py.File(again_path) as f:
        assert all(f[name].fletcher32 for name in qw.tensors)


def test_v1_only_reader_refuses_v2_with_the_upgrade_message(case, monkeypatch):
    _, path, _ = case
    monkeypatch.setattr(weights_file, "READABLE_VERSIONS", (1,))
    with pytest.raises(UnsupportedFormatError) as err:
        weights_file.read(path)
    assert str(err.value) == (f"{path}: weights format version 2 is not readable by this mobilenet-np "
                              "(reads 1); upgrade mobilenet-np")


@pytest.fixture(scope="module")
def coral_v2(tmp_path_factory):
    out = tmp_path_factory.mktemp("coral") / "coral.h5"
    convert(shared_path(*UINT8_DIR, UINT8_FILES[0]), out)
    return out


KERNEL = "MobilenetV1/Conv2d_5_pointwise/weights"
BIAS = "MobilenetV1/Conv2d_5_pointwise/biases"


def _set_attr(obj, key, value):
    def edit(f):
        (f if obj is None else f[obj]).attrs[key] = value
    return edit


def _del(path):
    def edit(f):
        del f[path]
    return edit


def _replace(name, values):
    def edit(f):
        attrs, new = dict(f[name].attrs), values(f)
        del f[name]
        f[name] = new
        f[name].attrs.update(attrs)
    return edit


def _odd_integer_type(f):
    """The bias rewritten with an int32 type of 16 bits' precision at offset 4: HDF5 would
    convert every value wrongly, with the data checksum intact."""
    values, attrs = f[BIAS][()], dict(f[BIAS].attrs)
    del f[BIAS]
    tid = h5py.h5t.STD_I32LE.copy()
    tid.set_precision(16)
    tid.set_offset(4)
    h5py.h5d.create(f.id, BIAS.encode(), tid, h5py.h5s.create_simple(values.shape))
    f[BIAS].id.write(h5py.h5s.ALL, h5py.h5s.ALL, values)
    f[BIAS].attrs.update(attrs)


MALFORMED = {
    "odd integer type": (_odd_integer_type, CorruptFileError, "non-standard integer type"),
    "keep dims": (_set_attr(None, "global_pool_keep_dims", "yes"), CorruptFileError, "global_pool_keep_dims"),
    "string scale": (_set_attr(KERNEL, "scale", "0.1"), CorruptFileError, "scale of <U3"),
    "dataset in activations": (lambda f: f.create_dataset("activations/Logits/x", data=[1]), ArchitectureError,
                               "unknown tensor activations/Logits/x"),
    "softmax without classes": (lambda f: f.attrs.update({"num_classes": 0}), CorruptFileError,
                                "output_op='SOFTMAX' is not NONE for a model without a classifier"),
    "quantization": (_set_attr(None, "quantization", "int4"), CorruptFileError, "quantization='int4'"),
    "pool op": (_set_attr(None, "global_pool_op", "MAX_POOL_2D"), CorruptFileError, "global_pool_op"),
    "logits op": (lambda f: f.attrs.__delitem__("logits_op"), CorruptFileError, "logits_op"),
    "softmax beta": (_set_attr(None, "softmax_beta", float("nan")), CorruptFileError, "softmax_beta"),
    "not folded": (_set_attr(None, "batchnorm_folded", False), CorruptFileError, "batchnorm_folded"),
    "kernel dtype": (_replace(KERNEL, lambda f: f[KERNEL][()].astype(np.int8)), ArchitectureError,
                     f"{KERNEL} has dtype int8"),
    "float bias": (_replace(BIAS, lambda f: f[BIAS][()].astype(np.float32)), ArchitectureError,
                   f"{BIAS} has dtype float32"),
    "no scale": (lambda f: f[KERNEL].attrs.__delitem__("scale"), CorruptFileError, "lacks the attribute"),
    "negative scale": (_set_attr(KERNEL, "scale", np.float32([-0.5])), CorruptFileError, "not positive"),
    "scale count": (_set_attr(KERNEL, "scale", np.float32([0.1, 0.2])), CorruptFileError, "2 scales"),
    "zero point range": (_set_attr(KERNEL, "zero_point", np.int32([300])), CorruptFileError,
                         "zero point outside the uint8 range"),
    "axis": (_set_attr(KERNEL, "quantized_axis", 0), CorruptFileError, "quantized_axis 0; expected 3"),
    "activation": (_set_attr(KERNEL, "fused_activation", "TANH"), CorruptFileError, "fused_activation 'TANH'"),
    "bias zero point": (_set_attr(BIAS, "zero_point", np.int32([3])), CorruptFileError, "non-zero zero point"),
    "missing group": (_del("activations/Conv2d_5_pointwise"), ArchitectureError,
                      "lacks activations/Conv2d_5_pointwise"),
    "unknown group": (lambda f: f.create_group("activations/Conv2d_99").attrs.update(
        {"scale": np.float32(1), "zero_point": np.int32(0), "dtype": "uint8"}), ArchitectureError,
        "unknown activations/Conv2d_99"),
    "no activations": (_del("activations"), ArchitectureError, "no activations group"),
    "group dtype": (_set_attr("activations/global_pool", "dtype", "int8"), CorruptFileError,
                    "activation global_pool is int8"),
    "group scale": (_set_attr("activations/Logits", "scale", np.float32(np.inf)), CorruptFileError,
                    "activation Logits has scale inf"),
    "group zero point": (_set_attr("activations/input", "zero_point", np.int32(-1)), CorruptFileError,
                         "activation input has zero point -1"),
    "group attribute": (lambda f: f["activations/input"].attrs.__delitem__("zero_point"), CorruptFileError,
                        "activation input lacks the attribute(s) zero_point"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_v2_file_is_one_clear_error(coral_v2, tmp_path, capsys, name):
    edit, error, message = MALFORMED[name]
    path = tmp_path / "bad.h5"
    path.write_bytes(coral_v2.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(error) as err:
        mnp.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert weights_tools_main(["verify", str(path)]) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and str(err.value) in stderr and "Traceback" not in stderr


def test_a_damaged_weight_byte_is_refused_by_its_checksum(coral_v2, tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(coral_v2.read_bytes())
    with h5py.File(path) as f:
        offset = f[KERNEL].id.get_offset()
        if offset is None:                       # chunked: the one chunk's address
            offset = f[KERNEL].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"bad\.h5"):
        weights_file.read(path)


def test_write_quantized_refuses_what_read_refuses_and_leaves_no_file(coral_v2, tmp_path):
    qw = weights_file.read(coral_v2)
    activations = {k: a for k, a in qw.activations.items() if k != "global_pool"}
    out = tmp_path / "out.h5"
    with pytest.raises(ArchitectureError, match="lacks activations/global_pool"):
        weights_file.write_quantized(out, qw.tensors, activations, qw.attrs)
    tensors = dict(qw.tensors, **{KERNEL: v2.QuantizedTensor(qw.tensors[KERNEL].values.astype(np.int8),
                                                             [0.1], [0], 3, "RELU6")})
    with pytest.raises(ArchitectureError, match="has dtype int8"):
        weights_file.write_quantized(out, tensors, qw.activations, qw.attrs)
    assert not out.exists() and not list(tmp_path.iterdir())


# --- conversion -------------------------------------------------------------------------------

def test_convert_keeps_a_quantized_tflite_quantized_unless_dequantize(tmp_path, capsys):
    tflite = shared_path(*UINT8_DIR, UINT8_FILES[1])
    assert weights_tools_main(["convert", str(tflite), str(tmp_path / "q.h5")]) == 0
    assert "quantized (uint8-per-tensor, format version 2)" in capsys.readouterr().out
    assert weights_tools_main(["convert", "--dequantize", str(tflite), str(tmp_path / "f.h5")]) == 0
    quantized, dequantized = weights_file.read(tmp_path / "q.h5"), weights_file.read(tmp_path / "f.h5")
    assert quantized.attrs["format_version"] == 2 and dequantized.attrs["format_version"] == 1
    assert quantized.tensors[KERNEL].fused_activation == "NONE"          # jevois leaves ReLU6 unfused
    t = quantized.tensors[KERNEL]
    assert np.array_equal(dequantized.tensors[KERNEL],
                          (t.scale.astype(np.float64) * (t.values.astype(np.float64) - t.zero_point)).astype(np.float32))
    assert weights_tools_main(["verify", str(tmp_path / "q.h5")]) == 0
    assert "quantization: uint8-per-tensor" in capsys.readouterr().out


# --- the quantized model ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def coral_model():
    return mnp.load(shared_path(*UINT8_DIR, UINT8_FILES[0]))


def test_load_of_a_quantized_tflite_runs_the_integer_path(coral_model):
    tflite = shared_path(*UINT8_DIR, UINT8_FILES[0])
    assert coral_model.quantized and not mnp.load(tflite, dequantize=True).quantized
    assert not mnp.build("mobilenet_v1", 0.25, 128, num_classes=0).quantized
    x = inputs(np.uint8, (160, 160), photos=2, random=1)
    graph = QuantizedGraph(tflite)
    want = graph.endpoints(x)
    features = coral_model(x)                        # uint8 pixels go in unchanged
    assert features.dtype == np.float32 and features.shape == (3, 512)
    assert np.array_equal(features, iref.dequantize(*want["global_pool"]).reshape(3, 512))
    logits_index = graph.sub.operators[-1].inputs[0]
    out = {}
    graph.run(x, on_op=lambda i, op, y: out.__setitem__(op.outputs[0], y))
    logits = iref.dequantize(out[logits_index], graph.scale(logits_index), graph.zero_point(logits_index))
    assert np.array_equal(coral_model.logits(x), logits)
    assert np.array_equal(coral_model.classify(features), logits)
    endpoints = coral_model.endpoints(x)
    for name in want:
        assert endpoints[name][1:] == want[name][1:] and np.array_equal(endpoints[name][0], want[name][0]), name
    assert np.array_equal(endpoints["Predictions"][0], out[graph.sub.outputs[0]])
    assert endpoints["Predictions"][1:] == (1 / 256, 0)
    assert set(coral_model.endpoints(x, ["Conv2d_3_pointwise"])) == {"Conv2d_3_pointwise"}


def test_float_images_are_mapped_and_quantized_with_the_input_parameters(coral_model, rng):
    x = rng.random((2, 160, 160, 3), dtype=np.float32)
    q = iref.quantize(x * np.float32(2) - np.float32(1), 1 / 128, 128, np.uint8)    # Coral: 1/128, 128
    assert np.array_equal(coral_model(x), coral_model(q))
    assert np.array_equal(coral_model.quantize_input(x), q)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        coral_model(x * 255)
    with pytest.raises(ValueError, match="dtype int32"):
        coral_model(q.astype(np.int32))


def test_int8_model_takes_int8_unchanged_and_images_quantized(case):
    tflite, path, x = case
    model = mnp.load(path)
    q = model.input_quantization
    if q.dtype != "int8":
        pytest.skip("the int8 case")
    graph = QuantizedGraph(tflite)
    softmax = graph.sub.operators[-1]
    assert graph.tensor(softmax.outputs[0]).dtype == np.int8 and softmax.opcode == ig.tfl.SOFTMAX
    out = {}
    graph.run(x, on_op=lambda i, op, y: out.__setitem__(op.outputs[0], y))
    k = softmax.inputs[0]
    assert np.array_equal(model(x), model(x.copy()))        # int8 arrays go in unchanged
    assert np.array_equal(model.logits(x), iref.dequantize(out[k], graph.scale(k), graph.zero_point(k)))
    assert np.array_equal(model.endpoints(x, "Predictions")["Predictions"][0], out[softmax.outputs[0]])
    pixels = np.random.default_rng(3).integers(0, 256, (2, *x.shape[1:3], 3), endpoint=False).astype(np.uint8)
    expected = iref.quantize(pixels.astype(np.float32) * np.float32(1 / 255) * np.float32(2) - np.float32(1),
                             q.scale, q.zero_point, np.int8)
    assert np.array_equal(model(pixels), model(expected))
    assert np.array_equal(model(x), iref.dequantize(*QuantizedGraph(path).endpoints(x)["global_pool"]).reshape(len(x), -1))


def test_quantized_model_save_load_and_backends_agree(coral_model, tmp_path):
    x = inputs(np.uint8, (160, 160), photos=1, random=1)
    coral_model.save(tmp_path / "saved.h5")
    again = mnp.load(tmp_path / "saved.h5", backend="numpy")
    assert again.quantized and again.attrs["format_version"] == 2
    assert np.array_equal(again(x), coral_model(x))
    assert np.array_equal(again.logits(x), coral_model.logits(x))


def test_fully_connected_logits_compute_what_the_1x1_logits_conv_computes(case, tmp_path):
    """logits_op FULLY_CONNECTED (Keras-style heads) builds an FC op on the same integers; with
    the multiplier rules of both ops alike for these files, the logits must be the same bytes."""
    _, path, x = case
    qw = weights_file.read(path)
    weights_file.write_quantized(tmp_path / "fc.h5", qw.tensors, qw.activations, {**qw.attrs, "logits_op": "FULLY_CONNECTED"})
    conv, fc = mnp.load(path, backend="numpy"), mnp.load(tmp_path / "fc.h5", backend="numpy")
    assert ig.tfl.FULLY_CONNECTED in [op.opcode for op in fc.graph(x.shape[1:3]).sub.operators]
    assert np.array_equal(fc.logits(x[:2]), conv.logits(x[:2]))
    assert np.array_equal(fc.endpoints(x[:2], "Predictions")["Predictions"][0],
                          conv.endpoints(x[:2], "Predictions")["Predictions"][0])


def test_cli_embed_and_classify_run_a_quantized_model(coral_model, coral_v2, tmp_path, capsys):
    from mobilenet_np.cli import main as cli_main
    parrot = shared_path("images", "coral_parrot.jpg")
    assert cli_main(["classify", "--model", str(coral_v2), str(parrot)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{parrot}\tmacaw ("), line
    assert cli_main(["embed", "--model", str(coral_v2), str(parrot), "-o", str(tmp_path / "f.npy")]) == 0
    features = np.load(tmp_path / "f.npy")
    assert np.array_equal(features, coral_model(coral_model.preprocess(parrot)[None]))
